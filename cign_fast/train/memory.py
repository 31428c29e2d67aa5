"""Exemplar memory: a fixed total budget of training clips shared evenly by the classes seen so far, or a
fixed number of clips per class.

After each task the old classes keep the first ``budget // classes_seen`` (or ``per_class``) of their
exemplars (the list is in priority order) and each new class gets as many, chosen by herding (iCaRL:
greedily match the class mean of L2-normalised embeddings) or uniformly at random.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

SELECTIONS = ("herding", "random")


def herding_order(features: Tensor, count: int) -> list[int]:
    """Rows of ``features`` [n, d] picked greedily so the running mean stays closest to the mean of all rows."""
    if features.dim() != 2:
        raise ValueError(f"features: expected [n, d], got shape {tuple(features.shape)}")
    features = torch.nn.functional.normalize(features.double(), dim=1)
    target = features.mean(dim=0)
    chosen: list[int] = []
    running_sum = torch.zeros_like(target)
    available = torch.ones(features.shape[0], dtype=torch.bool)
    for step in range(1, min(count, features.shape[0]) + 1):
        distances = (target - (running_sum + features) / step).norm(dim=1)
        distances[~available] = float("inf")
        pick = int(distances.argmin())
        chosen.append(pick)
        available[pick] = False
        running_sum += features[pick]
    return chosen


def random_order(num_candidates: int, count: int, seed: int) -> list[int]:
    """``count`` distinct positions in ``range(num_candidates)`` from a generator private to ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_candidates, generator=generator)[:count].tolist()


class ExemplarMemory:
    """Dataset indices of the stored exemplars per class (class index -> list, best first)."""

    def __init__(self, budget: int, selection: str = "herding", seed: int = 0, per_class: int = 0) -> None:
        if budget < 0:
            raise ValueError(f"memory.budget: expected an int >= 0, got {budget}")
        if per_class < 0:
            raise ValueError(f"memory.per_class: expected an int >= 0, got {per_class}")
        if budget > 0 and per_class > 0:
            raise ValueError(f"memory.budget, memory.per_class: set one of the two, got {budget} and {per_class}")
        if selection not in SELECTIONS:
            raise ValueError(f"memory.selection: expected one of {', '.join(SELECTIONS)}, got {selection!r}")
        self.budget = budget
        self.per_class = per_class
        self.selection = selection
        self.seed = seed
        self.exemplars: dict[int, list[int]] = {}

    @property
    def enabled(self) -> bool:
        return self.budget > 0 or self.per_class > 0

    def quota(self, num_classes: int) -> int:
        """Exemplars each class keeps once ``num_classes`` classes are seen."""
        return self.per_class if self.per_class > 0 else self.budget // num_classes

    def indices(self) -> list[int]:
        """Every stored exemplar (dataset indices), class by class."""
        return [index for cls in sorted(self.exemplars) for index in self.exemplars[cls]]

    def update(
        self,
        candidates_by_class: Mapping[int, Sequence[int]],
        embed: Callable[[Sequence[int]], tuple[Tensor, Sequence[int]]] | None = None,
    ) -> None:
        """``self.exemplars = self.selected(candidates_by_class, embed)``."""
        self.exemplars = self.selected(candidates_by_class, embed)

    def selected(
        self,
        candidates_by_class: Mapping[int, Sequence[int]],
        embed: Callable[[Sequence[int]], tuple[Tensor, Sequence[int]]] | None = None,
    ) -> dict[int, list[int]]:
        """The exemplars after adding classes (the memory itself is left as it is): the old classes' share
        shrunk, the new classes' exemplars selected by ``selection``.

        ``candidates_by_class``: the new classes' training clips (dataset indices).
        ``embed``: dataset indices -> (embeddings [m, d], the m indices that could be decoded); herding needs it.
        """
        if not self.enabled:
            return {}
        per_class = self.quota(len(self.exemplars) + len(candidates_by_class))
        exemplars = {cls: kept[:per_class] for cls, kept in self.exemplars.items()}
        for cls, candidates in sorted(candidates_by_class.items()):
            candidates = list(candidates)
            if self.selection == "herding":
                if embed is None:
                    raise ValueError("embed: herding selection needs an embedding function")
                features, candidates = embed(candidates) if candidates else (torch.zeros(0, 1), [])
                order = herding_order(features, per_class)
            else:
                order = random_order(len(candidates), per_class, self.seed * 100_003 + cls)
            exemplars[cls] = [int(candidates[position]) for position in order]
        return exemplars

    def state_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "per_class": self.per_class,
            "selection": self.selection,
            "seed": self.seed,
            "exemplars": {int(cls): list(indices) for cls, indices in self.exemplars.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget, self.selection, self.seed = int(state["budget"]), str(state["selection"]), int(state["seed"])
        self.per_class = int(state["per_class"])
        self.exemplars = {int(cls): [int(i) for i in indices] for cls, indices in state["exemplars"].items()}
