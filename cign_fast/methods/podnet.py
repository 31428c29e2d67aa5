"""PODNet: Pooled Outputs Distillation (Douillard, Cord, Ollion, Robert, Valle, ECCV 2020), on the backbone.

* Classifier (LSC, the paper's local similarity classifier): each class has K = ``podnet.proxies`` (10) proxies
  per head; a clip's similarity to class c is ``s_c = sum_k softmax_k(<theta_ck, h>) <theta_ck, h>`` with
  ``theta``, ``h`` L2-normalised, and the logits are ``eta * s`` with a learned scale eta (from 1) per head.
  New classes' proxies start random (the paper imprints them from the new data's features).
* Classification loss: the NCA loss with margin delta = ``podnet.margin`` (0.6):
  ``[-log(exp(eta (s_y - delta)) / sum_{c != y} exp(eta s_c))]_+``, per head.
* POD-spatial: on each modality's token map after the transformer, [S, D] (S tokens of D channels), squared,
  then pooled along the token axis ([D]) and along the channel axis ([S]); the two are concatenated,
  L2-normalised, and the distillation is the Euclidean distance to the old model's, batch mean. The paper
  pools a [C, H, W] map along its width and its height at every ResNet stage; the backbone's token maps
  have one token axis (a flattened grid in raw mode, a token sequence in features mode) and are taken
  once per modality, so the second pooling is along the channels: POD-spatial's [C x H] + [C x W] becomes
  [D] + [S]. POD-flat: the Euclidean distance between the new and old pooled features f_a (f_v), batch mean.
* Weights (the paper's CIFAR-100 values): ``podnet.spatial_weight`` 3, ``podnet.flat_weight`` 1, both times
  the adaptive ``sqrt(N / N_new)`` (classes seen over new classes).
* Audio-visual: per-modality LSC heads and distillation; predictions: argmax of each head's logits, and the
  audio-visual one late fusion of the two softmaxes of ``eta * s`` (:mod:`cign_fast.methods.backbone`).
* Memory: PODNet is a replay method (herding); it refuses to run without exemplars. Departures: the trainer's
  Adam and schedule instead of the paper's SGD; no class-balanced fine-tuning stage after each task.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.backbone import Backbone, BackboneMethod, BackboneOutput, ClassHead
from cign_fast.methods.registry import register_method
from cign_fast.model import ModelConfig
from cign_fast.model.losses import check_labels


class LocalSimilarityHead(ClassHead):
    """PODNet's LSC: K proxies per class, ``eta * sum_k softmax_k(cos) cos`` ([B, D] -> [B, N]); grows by classes."""

    def __init__(self, dim: int, proxies: int) -> None:
        super().__init__()
        self.dim = dim
        self.proxies = proxies
        self.weight = nn.Parameter(torch.zeros(0, dim))  # [N * K, D]
        self.scale = nn.Parameter(torch.ones(()))  # eta

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0] // self.proxies

    def add_classes(self, num_new: int, like: Tensor) -> None:
        """K fresh random unit proxies for each new class; the old ones kept."""
        fresh = torch.randn(num_new * self.proxies, self.dim, device=like.device, dtype=like.dtype)
        self.weight = nn.Parameter(torch.cat([self.weight.detach().to(like), F.normalize(fresh, dim=-1)]))

    def similarities(self, features: Tensor) -> Tensor:
        """``s`` [B, N] (without eta)."""
        cosines = F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).t()  # [B, N * K]
        cosines = cosines.view(features.shape[0], self.num_classes, self.proxies)
        return (F.softmax(cosines, dim=-1) * cosines).sum(dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * self.similarities(features)


class PODBackbone(Backbone):
    """The backbone with an LSC head per modality instead of the linear ones."""

    def __init__(self, cfg: ModelConfig, proxies: int) -> None:
        super().__init__(cfg)
        self.audio_branch.head = LocalSimilarityHead(cfg.dim, proxies)
        self.visual_branch.head = LocalSimilarityHead(cfg.dim, proxies)


def nca_loss(logits: Tensor, labels: Tensor, scale: Tensor, margin: float) -> Tensor:
    """``mean [logsumexp_{c != y} z_c - (z_y - eta * delta)]_+`` of ``logits`` z = eta * s [B, N]."""
    target = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf"))
    if logits.shape[1] == 1:  # one class seen: nothing to separate from
        return (target * 0).mean()
    return F.relu(torch.logsumexp(others, dim=1) - (target - scale * margin)).mean()


def pooled_map(tokens: Tensor) -> Tensor:
    """[B, S, D] -> [B, D + S]: the squared map pooled along the tokens and along the channels, L2-normalised."""
    squared = tokens.pow(2)
    return F.normalize(torch.cat([squared.sum(dim=1), squared.sum(dim=2)], dim=1), dim=1)


def pod_spatial(tokens: Tensor, old_tokens: Tensor) -> Tensor:
    """POD-spatial of one token map: batch mean of ``|pooled(new) - pooled(old)|_2`` (0 for identical maps)."""
    if tokens.shape != old_tokens.shape:
        raise ValueError(
            f"old_tokens: expected the new map's shape {tuple(tokens.shape)}, got {tuple(old_tokens.shape)}"
        )
    return (pooled_map(tokens) - pooled_map(old_tokens)).norm(dim=1).mean()


def pod_flat(features: Tensor, old_features: Tensor) -> Tensor:
    """POD-flat: batch mean of ``|h - h_old|_2`` of the pooled features [B, D]."""
    return (features - old_features).norm(dim=1).mean()


@register_method
class PODNet(BackboneMethod):
    """LSC heads with the NCA loss, plus POD-spatial and POD-flat distillation (module docstring)."""

    name = "podnet"
    loss_terms = ("nca_audio", "nca_visual", "pod_spatial", "pod_flat")
    memory_use = "required"
    config_sections = ("podnet",)
    uses_teacher = True

    def build_model(self) -> PODBackbone:
        return PODBackbone(self.model_config, self.config.podnet.proxies)

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        batch, num_classes = out.audio_logits.shape
        check_labels(labels, batch, num_classes)
        settings, labels = self.config.podnet, labels.long()
        terms = {
            f"nca_{modality}": nca_loss(
                getattr(out, f"{modality}_logits"),
                labels,
                getattr(model, f"{modality}_branch").head.scale.float(),
                settings.margin,
            )
            for modality in ("audio", "visual")
        }
        if teacher_out is None:
            zero = out.audio_logits.new_zeros(())
            terms.update(pod_spatial=zero, pod_flat=zero)
        else:
            adaptive = math.sqrt(num_classes / self.current_task.task_sizes[-1])
            terms["pod_spatial"] = (
                settings.spatial_weight
                * adaptive
                * (
                    pod_spatial(out.audio_tokens, teacher_out.audio_tokens)
                    + pod_spatial(out.visual_tokens, teacher_out.visual_tokens)
                )
            )
            terms["pod_flat"] = (
                settings.flat_weight
                * adaptive
                * (
                    pod_flat(out.audio_features, teacher_out.audio_features)
                    + pod_flat(out.visual_features, teacher_out.visual_features)
                )
            )
        total = terms["nca_audio"] + terms["nca_visual"] + terms["pod_spatial"] + terms["pod_flat"]
        return {**terms, "total": total}
