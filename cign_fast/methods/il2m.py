"""IL2M: class-incremental learning with dual memory (Belouadah & Popescu, ICCV 2019), on the backbone.

* Training: plain fine-tuning with replay (softmax cross-entropy over all classes seen on the task's clips
  plus the exemplars); IL2M is a replay method and refuses to run without a memory.
* The second memory: class statistics, kept after each task t on the model of that state:
  ``initial[c]`` (the paper's mu^P), the mean score p(c | x) of class c's training clips, for the classes
  of task t; ``current[c]`` (mu^N), the mean score of class c's exemplars, for every class seen; and the
  state's confidence ``confidence[t]`` (M), the mean top-1 score over the task's training clips.
* Rectification (the paper's eq. 4), used by ``predict`` after a task t > 0: when a clip's top class is one
  of task t's (new) classes, every old class c of task s(c) < t has its score multiplied by
  ``initial[c] / current[c] * confidence[t] / confidence[s(c)]``; then the argmax is taken again.
  Clips whose top class is old keep their scores.
* Audio-visual: the scores are each head's softmax (audio, visual) and the normalised product of the two
  (audio-visual); statistics and rectification are kept per modality, so the audio-visual prediction is
  the argmax of the rectified product of the posteriors (late fusion, :mod:`cign_fast.methods.backbone`).
* Departures: the trainer's Adam and schedule instead of the paper's SGD recipe; IL2M has no
  hyper-parameter of its own, so it has no config section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from cign_fast.methods.backbone import BackboneMethod, BackboneOutput, modality_log_probs
from cign_fast.methods.base import TaskResources, eval_outputs, rank_shard
from cign_fast.methods.registry import register_method
from cign_fast.metrics import MODALITIES
from cign_fast.model import ModelConfig

if TYPE_CHECKING:  # importing it at run time would be circular
    from cign_fast.train.config import TrainConfig


def mean_scores(
    model: nn.Module, resources: TaskResources, indices: list[int], num_classes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Over ``indices`` (summed over the ranks): ``(per class [N, 3] the sum of p(c | x) for x of class c,
    per class [N] the clip count, [3] the sum of the top-1 scores)``; the 3 columns are ``MODALITIES``."""
    device = resources.context.device
    own = torch.zeros(num_classes, len(MODALITIES), dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    top = torch.zeros(len(MODALITIES), dtype=torch.float64, device=device)
    for out, labels in eval_outputs(model, resources.batches(rank_shard(indices, resources.context))):
        scores = torch.stack(
            [log_probs.exp() for log_probs in modality_log_probs(out.audio_logits, out.visual_logits).values()], dim=-1
        ).double()  # [B, N, 3]
        rows = torch.arange(labels.shape[0], device=labels.device)
        own.index_add_(0, labels, scores[rows, labels])
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        top += scores.amax(dim=1).sum(dim=0)
    for tensor in (own, counts, top):
        resources.all_reduce_sum(tensor)
    return own.cpu(), counts.cpu(), top.cpu()


def rectify(scores: Tensor, initial: Tensor, current: Tensor, confidence: Tensor, class_task: Tensor) -> Tensor:
    """IL2M's rectified scores [B, N] of one modality (module docstring): ``initial``, ``current`` [N],
    ``confidence`` [T] per state, ``class_task`` [N] the task of each class (all four on the CPU); task T-1
    is the current one."""
    newest = confidence.shape[0] - 1
    old = class_task < newest
    factor = torch.ones_like(initial)
    factor[old] = initial[old] / current[old].clamp_min(1e-12) * confidence[newest] / confidence[class_task[old]]
    predicted_new = ~old.to(scores.device)[scores.argmax(dim=-1)]  # [B]
    return torch.where(predicted_new.unsqueeze(-1), scores * factor.to(scores), scores)


@register_method
class IL2M(BackboneMethod):
    """Replay fine-tuning plus IL2M's score rectification with stored class statistics (module docstring)."""

    name = "il2m"
    memory_use = "required"

    def __init__(self, config: TrainConfig, model_config: ModelConfig) -> None:
        super().__init__(config, model_config)
        # on the CPU, float64; columns MODALITIES
        self.initial = torch.zeros(0, len(MODALITIES), dtype=torch.float64)  # [N, 3] mu^P
        self.current = torch.zeros(0, len(MODALITIES), dtype=torch.float64)  # [N, 3] mu^N (this state)
        self.confidence = torch.zeros(0, len(MODALITIES), dtype=torch.float64)  # [T, 3] M per state
        self.class_task = torch.zeros(0, dtype=torch.long)  # [N]

    def end_task(self, model: nn.Module, resources: TaskResources) -> None:
        """The new classes' initial mean scores, every class's mean score on its exemplars, the state's confidence."""
        task = resources.task
        num_classes = task.num_classes
        first, _ = task.class_range(task.index)
        own, counts, top = mean_scores(model, resources, resources.task_indices, num_classes)
        if bool((counts[first:] == 0).any()):
            missing = (counts[first:] == 0).nonzero().flatten().add(first).tolist()
            raise ValueError(f"il2m: every new class needs a decodable training clip, none for class(es) {missing}")
        initial = own[first:] / counts[first:, None]
        exemplar_indices = [index for cls in sorted(resources.exemplars) for index in resources.exemplars[cls]]
        old_own, old_counts, _ = mean_scores(model, resources, exemplar_indices, num_classes)
        current = torch.where(
            old_counts[:, None] > 0, old_own / old_counts.clamp_min(1)[:, None], torch.cat([self.initial, initial])
        )  # a class without exemplars is not rescaled
        self.initial = torch.cat([self.initial, initial])
        self.current = current
        self.confidence = torch.cat([self.confidence, (top / counts.sum()).unsqueeze(0)])
        self.class_task = torch.cat([self.class_task, torch.full((num_classes - first,), task.index)])

    def predict(self, out: BackboneOutput) -> dict[str, Tensor]:
        num_classes = out.audio_logits.shape[1]
        if self.initial.shape[0] != num_classes:
            raise ValueError(
                f"il2m: class statistics for {self.initial.shape[0]} classes, the model has "
                f"{num_classes}; they are kept when a task ends (evaluate a '-done' checkpoint)"
            )
        predictions = {}
        for column, (modality, log_probs) in enumerate(modality_log_probs(out.audio_logits, out.visual_logits).items()):
            scores = rectify(
                log_probs.exp(),
                self.initial[:, column],
                self.current[:, column],
                self.confidence[:, column],
                self.class_task,
            )
            predictions[modality] = scores.argmax(dim=-1)
        return predictions

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "initial": self.initial,
            "current": self.current,
            "confidence": self.confidence,
            "class_task": self.class_task,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        for key in ("initial", "current", "confidence", "class_task"):
            setattr(self, key, state[key].cpu())
