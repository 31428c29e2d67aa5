"""CIGN (Mo, Pian, Tian, ICCV 2023): class tokens, continual grouping and class-token distillation.

The model is :class:`cign_fast.model.CIGN`; the loss is :func:`cign_fast.model.cign_loss`: per-modality
classification (softmax cross-entropy, or the authors' BCE), the token head's cross-entropy and, at t > 0,
the distillation against the model frozen after the previous task, with the ``distill`` section's settings.
Predictions: audio ``argmax p_a``, visual ``argmax p_v``, audio-visual ``argmax p_a * p_v`` with p the
softmax (or, after BCE training, the per-class sigmoid) of the class logits (:func:`cign_fast.model.predict`).
Embedding of a clip: its own class's audio and visual group vectors, L2-normalised and concatenated.
Exemplar-free by default; ``memory.*`` adds replay.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.base import ContinualMethod
from cign_fast.methods.registry import register_method
from cign_fast.model import CIGN, CIGNOutput, cign_loss, predict


def class_embeddings(out: CIGNOutput, labels: Tensor) -> Tensor:
    """[B, 2D] float32: each clip's audio and visual group vectors of class ``labels[b]``, L2-normalised."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    audio = F.normalize(out.audio_groups[rows, labels].float(), dim=-1)
    visual = F.normalize(out.visual_groups[rows, labels].float(), dim=-1)
    return torch.cat([audio, visual], dim=-1)


@register_method
class CIGNMethod(ContinualMethod):
    """CIGN as a method (module docstring); hyper-parameters in the ``model`` and ``distill`` sections."""

    name = "cign"
    loss_terms = ("cls_audio", "cls_visual", "token_ce", "kd")
    memory_use = "optional"
    config_sections = ("distill",)

    @property
    def uses_teacher(self) -> bool:
        return self.config.distill.enabled

    def build_model(self) -> CIGN:
        return CIGN(self.model_config)

    def loss(
        self, model: nn.Module, out: CIGNOutput, labels: Tensor, teacher_out: CIGNOutput | None
    ) -> dict[str, Tensor]:
        distill = self.config.distill
        return cign_loss(
            out,
            labels,
            teacher_out,
            self.current_task.num_old_classes,
            temperature=distill.temperature,
            kd_weight=distill.weight,
            backend=self.model_config.backend,
            distill_form=distill.form,
            classification=distill.classification,
            old_class_negatives=distill.old_class_negatives,
            token_weight=distill.token_weight,
        )

    def predict(self, out: CIGNOutput) -> dict[str, Tensor]:
        return predict(out, self.config.distill.classification)

    def embed(self, out: CIGNOutput, labels: Tensor) -> Tensor:
        return class_embeddings(out, labels)
