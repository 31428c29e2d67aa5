"""SS-IL: Separated Softmax for Incremental Learning (Ahn, Kwak, Lim, Bang, Kim, Moon, ICCV 2021), on the backbone.

* Separated softmax: a clip of a new class is scored by a softmax over the new classes' logits only, a clip
  of an old class (an exemplar) by a softmax over the old classes' logits only, so training on the new
  classes does not push the old logits down. Per head: ``(sum of the two cross-entropies) / B``.
* Task-wise KD: at t > 0, on every clip, ``sum over old tasks tau of T^2 * KL(softmax(z_old[:, C_tau] / T) ||
  softmax(z[:, C_tau] / T))`` (batch mean), the softmax taken within each old task's classes C_tau;
  ``kd = ssil.weight * (audio + visual)``. Defaults from the paper: T = 2 (``ssil.temperature``), weight 1.
* Memory: SS-IL is a replay method; it refuses to run without exemplars.
* Departure: the mini-batches mix the task's clips and the exemplars as the trainer's sampler draws them,
  not the paper's fixed new / replay split of each batch. Predictions as fine-tuning's (late fusion).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.backbone import BackboneMethod, BackboneOutput, distill_old_classes
from cign_fast.methods.base import TaskInfo
from cign_fast.methods.registry import register_method
from cign_fast.model.losses import check_labels


def separated_cross_entropy(logits: Tensor, labels: Tensor, num_old: int) -> Tensor:
    """SS-IL's classification loss of one head [B, N]: each clip's softmax runs over its own group of classes
    (old ``[0, N_old)`` or new ``[N_old, N)``); the other group's logits are masked out (no gradient)."""
    new_column = torch.arange(logits.shape[1], device=logits.device) >= num_old  # [N]
    other_group = new_column.unsqueeze(0) != (labels >= num_old).unsqueeze(1)  # [B, N]
    log_probs = F.log_softmax(logits.masked_fill(other_group, float("-inf")), dim=-1)
    return F.nll_loss(log_probs, labels.long())


def task_wise_distillation(
    student_logits: Tensor, teacher_logits: Tensor, task: TaskInfo, temperature: float, backend: str
) -> Tensor:
    """Sum over the old tasks of the KD restricted to each task's classes (module docstring)."""
    total = distill_old_classes(student_logits, teacher_logits, temperature, backend, task.class_range(0))
    for old in range(1, task.index):
        total = total + distill_old_classes(student_logits, teacher_logits, temperature, backend, task.class_range(old))
    return total


@register_method
class SSIL(BackboneMethod):
    """Separated softmax plus task-wise distillation, with replay (module docstring)."""

    name = "ssil"
    loss_terms = ("ce_audio", "ce_visual", "kd")
    memory_use = "required"
    config_sections = ("ssil",)
    uses_teacher = True

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        batch, num_classes = out.audio_logits.shape
        check_labels(labels, batch, num_classes)
        num_old = self.current_task.num_old_classes
        ce_audio = separated_cross_entropy(out.audio_logits, labels, num_old)
        ce_visual = separated_cross_entropy(out.visual_logits, labels, num_old)
        if teacher_out is None:
            kd = out.audio_logits.new_zeros(())
        else:
            settings, backend = self.config.ssil, self.model_config.backend
            kd = settings.weight * (
                task_wise_distillation(
                    out.audio_logits, teacher_out.audio_logits, self.current_task, settings.temperature, backend
                )
                + task_wise_distillation(
                    out.visual_logits, teacher_out.visual_logits, self.current_task, settings.temperature, backend
                )
            )
        return {"ce_audio": ce_audio, "ce_visual": ce_visual, "kd": kd, "total": ce_audio + ce_visual + kd}
