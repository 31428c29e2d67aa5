"""iCaRL (Rebuffi, Kolesnikov, Sperl, Lampert, CVPR 2017) on the backbone.

* Memory: herding exemplars (``memory.selection: herding``) in the embedding space below; the method refuses
  to run without a memory (``memory.budget`` or ``memory.per_class``). The paper keeps K = 2000 in total.
* Loss: per head, the sigmoid binary cross-entropy over all N classes seen, whose targets are the one-hot
  label on the new classes' columns and, at t > 0, the previous model's sigmoid outputs on the old classes'
  columns (the distillation). Logged as ``bce_audio`` / ``bce_visual`` (new columns) and ``kd`` (old columns
  of both heads); their sum is the mean binary cross-entropy over B x N entries per head.
* Classifier (``icarl.classifier``): ``nme`` (the paper's) is the nearest mean of exemplars: after each task
  the class means mu_c of the L2-normalised features of each class's exemplars (then normalised) per modality;
  audio ``argmin_c |f_a/|f_a| - mu_a,c|``, visual likewise, audio-visual ``argmin_c`` of the sum of the two
  squared distances (the distance between the concatenated normalised embeddings). ``cnn`` uses the heads:
  ``argmax`` of each sigmoid, audio-visual ``argmax sigma_a * sigma_v``.
* Departures: Adam and the trainer's schedule instead of the paper's SGD (lr 2.0, 70 epochs, decays at 49
  and 63); no horizontal flip when computing the class means (the clips have a sound track).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.backbone import BackboneMethod, BackboneOutput, feature_embedding, late_fusion_predict
from cign_fast.methods.base import TaskResources
from cign_fast.methods.registry import register_method
from cign_fast.model import ModelConfig
from cign_fast.model.losses import check_labels

if TYPE_CHECKING:  # importing it at run time would be circular
    from cign_fast.train.config import TrainConfig

CLASSIFIERS = ("nme", "cnn")


def distilled_bce(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None) -> tuple[Tensor, Tensor]:
    """iCaRL's loss of one head [B, N]: ``(new-column part, old-column part)`` of the mean BCE over B x N,
    targets one-hot on the columns N_old.. and ``sigmoid(teacher_logits)`` [B, N_old] on the first N_old."""
    batch, num_classes = logits.shape
    targets = F.one_hot(labels.long(), num_classes).to(logits.dtype)
    num_old = 0 if teacher_logits is None else teacher_logits.shape[1]
    if teacher_logits is not None:
        targets[:, :num_old] = torch.sigmoid(teacher_logits.to(logits.dtype))
    entries = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return entries[:, num_old:].sum() / entries.numel(), entries[:, :num_old].sum() / entries.numel()


def class_means(embeddings: Tensor, labels: Tensor, num_classes: int, modality_width: int) -> Tensor:
    """[N, 2D]: per class, the mean of each modality's half of ``embeddings`` [n, 2D], L2-normalised."""
    present = torch.bincount(labels, minlength=num_classes)
    if bool((present[:num_classes] == 0).any()):
        missing = (present[:num_classes] == 0).nonzero().flatten().tolist()
        raise ValueError(f"exemplars: every class needs at least one decodable exemplar, none for class(es) {missing}")
    # normalising the sum equals normalising the mean
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype).index_add_(0, labels, embeddings)
    audio, visual = sums[:, :modality_width], sums[:, modality_width:]
    return torch.cat([F.normalize(audio, dim=-1), F.normalize(visual, dim=-1)], dim=-1)


def nearest_mean_predict(embeddings: Tensor, means: Tensor, modality_width: int) -> dict[str, Tensor]:
    """Class indices [B] of the nearest class mean per modality (halves of the [B, 2D] and [N, 2D] inputs),
    and of the smallest sum of the two squared distances (audio-visual)."""
    audio = torch.cdist(embeddings[:, :modality_width], means[:, :modality_width]).pow(2)
    visual = torch.cdist(embeddings[:, modality_width:], means[:, modality_width:]).pow(2)
    return {
        "audio": audio.argmin(dim=-1),
        "visual": visual.argmin(dim=-1),
        "audio_visual": (audio + visual).argmin(dim=-1),
    }


@register_method
class ICaRL(BackboneMethod):
    """Herding memory, distilled sigmoid BCE, nearest-mean-of-exemplars classifier (module docstring)."""

    name = "icarl"
    loss_terms = ("bce_audio", "bce_visual", "kd")
    memory_use = "required"
    config_sections = ("icarl",)
    uses_teacher = True

    def __init__(self, config: TrainConfig, model_config: ModelConfig) -> None:
        super().__init__(config, model_config)
        self.means: Tensor | None = None  # [N, 2D] class means of the exemplars, on the CPU

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        batch, num_classes = out.audio_logits.shape
        check_labels(labels, batch, num_classes)
        audio_new, audio_old = distilled_bce(
            out.audio_logits, labels, None if teacher_out is None else teacher_out.audio_logits
        )
        visual_new, visual_old = distilled_bce(
            out.visual_logits, labels, None if teacher_out is None else teacher_out.visual_logits
        )
        kd = audio_old + visual_old
        return {"bce_audio": audio_new, "bce_visual": visual_new, "kd": kd, "total": audio_new + visual_new + kd}

    def end_task(self, model: nn.Module, resources: TaskResources) -> None:
        """The class means of the exemplars just selected (every rank computes the same)."""
        indices = [index for cls in sorted(resources.exemplars) for index in resources.exemplars[cls]]
        embeddings, kept = resources.embed(indices)
        label_of = {index: cls for cls, members in resources.exemplars.items() for index in members}
        labels = torch.tensor([label_of[int(index)] for index in kept], dtype=torch.long)
        self.means = class_means(embeddings.cpu(), labels, resources.task.num_classes, embeddings.shape[1] // 2)

    def predict(self, out: BackboneOutput) -> dict[str, Tensor]:
        if self.config.icarl.classifier == "cnn":
            return late_fusion_predict(F.logsigmoid(out.audio_logits.float()), F.logsigmoid(out.visual_logits.float()))
        num_classes = out.audio_logits.shape[1]
        if self.means is None or self.means.shape[0] != num_classes:
            have = 0 if self.means is None else self.means.shape[0]
            raise ValueError(
                f"icarl.classifier: the nearest-mean classifier has class means for {have} classes, "
                f"the model has {num_classes}; they are computed when a task ends (evaluate a "
                "'-done' checkpoint, or use icarl.classifier=cnn)"
            )
        embeddings = feature_embedding(out)
        return nearest_mean_predict(embeddings, self.means.to(embeddings.device), embeddings.shape[1] // 2)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "means": self.means}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.means = state["means"]
