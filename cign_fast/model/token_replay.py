"""Token replay: per-class Gaussian statistics of the token maps CIGN's branches read, and samples from them.

After a task, every new class keeps the mean and the standard deviation, entry by entry, of its training
clips' token maps (``CIGN.encode``: audio [S_a, D], visual [S_v, D]). At later tasks, clips drawn from those
Gaussians stand in for the old classes' clips: they pass through the branches (``CIGN.forward_tokens``) and
are classified among all classes seen, so the old classes keep winning on inputs that look like theirs.
No clip is stored: C x 2 x (S_a + S_v) x D numbers for C classes. Not in the paper or the authors' code
(see docs/model.md, "Token replay").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

MODALITIES = ("audio", "visual")


class TokenStatistics:
    """Per-class mean and standard deviation of each modality's token map.

    ``mean[modality]`` and ``std[modality]``: [C, S, D] float32 on the CPU, row c for class c (classes are
    added task by task, in class order).
    """

    def __init__(self) -> None:
        self.mean: dict[str, Tensor] = {}
        self.std: dict[str, Tensor] = {}

    @property
    def num_classes(self) -> int:
        return 0 if not self.mean else int(self.mean["audio"].shape[0])

    def add_classes(
        self,
        token_batches: Iterable[tuple[Tensor, Tensor, Tensor]],
        first: int,
        stop: int,
        all_reduce_sum: Callable[[Tensor], Tensor] = lambda tensor: tensor,
    ) -> None:
        """Add classes ``first..stop-1`` from ``(audio_tokens [B, S_a, D], visual_tokens [B, S_v, D], labels [B])``
        batches (labels in ``[first, stop)``; under DDP each rank passes its shard and ``all_reduce_sum``
        sums over the ranks). Classes must be added in order, each once, and each needs two clips."""
        if first != self.num_classes:
            raise ValueError(f"first: expected {self.num_classes} (the next class), got {first}")
        num_new = stop - first
        sums: dict[str, Tensor] = {}
        squares: dict[str, Tensor] = {}
        counts: Tensor | None = None
        for audio, visual, labels in token_batches:
            rows = labels.long() - first
            if bool(((rows < 0) | (rows >= num_new)).any()):
                raise ValueError(f"labels: expected classes in [{first}, {stop}), got {labels.unique().tolist()}")
            if counts is None:  # on the tokens' device, so that all_reduce_sum works with any backend
                counts = torch.zeros(num_new, dtype=torch.float64, device=audio.device)
            counts.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))
            for modality, tokens in zip(MODALITIES, (audio, visual), strict=True):
                values = tokens.detach().double()
                if modality not in sums:
                    sums[modality] = values.new_zeros((num_new, *values.shape[1:]))
                    squares[modality] = values.new_zeros((num_new, *values.shape[1:]))
                sums[modality].index_add_(0, rows, values)
                squares[modality].index_add_(0, rows, values.square())
        if counts is None:
            raise ValueError("token_batches: expected at least one batch of the new classes' clips")
        counts = all_reduce_sum(counts)
        if bool((counts < 2).any()):
            short = (counts < 2).nonzero().flatten().add(first).tolist()
            raise ValueError(f"token replay: every class needs two training clips, class(es) {short} have fewer")
        for modality in MODALITIES:
            total, total_squares = all_reduce_sum(sums[modality]), all_reduce_sum(squares[modality])
            shape = (-1,) + (1,) * (total.dim() - 1)
            mean = total / counts.view(shape)
            variance = (total_squares - counts.view(shape) * mean.square()) / (counts.view(shape) - 1)
            std = variance.clamp_min(0).sqrt()
            for store, value in ((self.mean, mean.float().cpu()), (self.std, std.float().cpu())):
                store[modality] = torch.cat([store[modality], value]) if modality in store else value

    def sample(
        self, labels: Tensor, generator: torch.Generator, device: torch.device | str = "cpu", spread: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Token maps for ``labels`` [n] (classes with statistics): audio [n, S_a, D], visual [n, S_v, D], float32
        on ``device``, drawn on the CPU with ``generator`` (so every device draws the same): the class mean plus
        ``spread`` x its standard deviation x N(0, 1), entry by entry (``spread`` 0: the means alone)."""
        rows = labels.cpu().long()
        drawn = []
        for modality in MODALITIES:
            mean, std = self.mean[modality][rows], self.std[modality][rows]
            drawn.append((mean + spread * std * torch.randn(mean.shape, generator=generator)).to(device))
        return drawn[0], drawn[1]

    def state_dict(self) -> dict[str, Tensor]:
        return {
            f"{kind}_{modality}": getattr(self, kind)[modality] for kind in ("mean", "std") for modality in self.mean
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.mean = {m: state[f"mean_{m}"].cpu() for m in MODALITIES if f"mean_{m}" in state}
        self.std = {m: state[f"std_{m}"].cpu() for m in MODALITIES if f"std_{m}" in state}
