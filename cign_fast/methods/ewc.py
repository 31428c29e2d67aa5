"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) on the backbone.

After each task the diagonal empirical Fisher of the task is estimated on its training clips (evaluation
transforms, model in eval mode): ``F_n = mean over clips of (d log p(y | x) / d theta_n)^2`` with one
per-clip gradient each (``torch.func.vmap``), ``log p(y | x) = log p_a(y | x) + log p_v(y | x)`` the two
heads' log-likelihoods of the true label. The Fishers accumulate, ``F <- ewc.fisher_decay * F + F_t``
(1 = their sum: the single-penalty form of Huszar, PNAS 2018, which Kirkpatrick et al. adopt in their
reply; < 1 is online EWC, Schwarz et al. 2018), and the anchor ``theta*`` is the model after the task.
Later tasks add

    ewc = ewc.weight / 2 * sum_n F_n (theta_n - theta*_n)^2

(Kirkpatrick et al. eq. 3) to the cross-entropy. Parameters that grew (the heads) are penalised on their
old rows only. The paper tunes lambda per experiment and gives no general value; ``ewc.weight`` defaults to
5000, FACIL's (Masana et al., TPAMI 2022). Predictions as fine-tuning's (late fusion).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from cign_fast.methods.backbone import BackboneMethod, BackboneOutput, classification_loss
from cign_fast.methods.base import TaskResources
from cign_fast.methods.registry import register_method
from cign_fast.model import ModelConfig

if TYPE_CHECKING:  # importing it at run time would be circular
    from cign_fast.train.config import TrainConfig

FISHER_CHUNK = 16  # clips whose gradients are held at once (memory: FISHER_CHUNK copies of the parameters)


def log_likelihood_loss(out: BackboneOutput, labels: Tensor) -> Tensor:
    """``-(log p_a(y) + log p_v(y))`` summed over the batch (no label checks: it runs under ``vmap``)."""
    return F.cross_entropy(out.audio_logits, labels, reduction="sum") + F.cross_entropy(
        out.visual_logits, labels, reduction="sum"
    )


def squared_gradient_sums(
    model: nn.Module, batches: Iterator[tuple[Tensor, Tensor, Tensor]], chunk_size: int = FISHER_CHUNK
) -> tuple[dict[str, Tensor], int]:
    """``({name: sum over clips of (d log p(y|x) / d theta)^2}, clips)`` over the trainable parameters,
    one gradient per clip, the model in eval mode (its mode is restored)."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def clip_loss(weights: dict[str, Tensor], audio: Tensor, visual: Tensor, label: Tensor) -> Tensor:
        out = functional_call(model, {**weights, **frozen, **buffers}, (audio.unsqueeze(0), visual.unsqueeze(0)))
        return log_likelihood_loss(out, label.unsqueeze(0))

    per_clip_gradients = vmap(grad(clip_loss), in_dims=(None, 0, 0, 0), chunk_size=chunk_size)
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # vmap runs attention through its slower per-clip fallback and says so each time; the result is exact
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            for audio, visual, labels in batches:
                gradients = per_clip_gradients(params, audio.float(), visual.float(), labels.long())
                for name, gradient in gradients.items():
                    sums[name] += gradient.pow(2).sum(dim=0)
                count += labels.shape[0]
    finally:
        model.train(was_training)
    return sums, count


def leading_block(param: Tensor, shape: torch.Size) -> Tensor:
    """``param[:shape[0], :shape[1], ...]``: the part of a grown parameter that existed at ``shape``."""
    return param[tuple(slice(0, size) for size in shape)]


@register_method
class EWC(BackboneMethod):
    """Cross-entropy plus the quadratic Fisher penalty towards the previous tasks' parameters (module docstring)."""

    name = "ewc"
    loss_terms = ("ce_audio", "ce_visual", "ewc")
    memory_use = "optional"
    config_sections = ("ewc",)

    def __init__(self, config: TrainConfig, model_config: ModelConfig) -> None:
        super().__init__(config, model_config)
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    def penalty(self, model: nn.Module) -> Tensor:
        """``ewc.weight / 2 * sum_n F_n (theta_n - theta*_n)^2`` (0 before the first task ends)."""
        like = next(model.parameters())
        total = like.new_zeros((), dtype=torch.float32)
        for name, param in model.named_parameters():
            if name in self.fisher:
                anchor = self.anchor[name]
                total = total + (self.fisher[name] * (leading_block(param, anchor.shape) - anchor).pow(2)).sum()
        return 0.5 * self.config.ewc.weight * total

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        terms = classification_loss(out, labels)
        penalty = self.penalty(model)
        return {**terms, "ewc": penalty, "total": terms["ce_audio"] + terms["ce_visual"] + penalty}

    def task_fisher(self, model: nn.Module, resources: TaskResources) -> dict[str, Tensor]:
        """The diagonal empirical Fisher of the task's training clips (each rank sums its shard)."""
        context = resources.context
        shard = resources.task_indices[context.rank :: context.world_size]
        sums, count = squared_gradient_sums(model, resources.batches(shard))
        total = resources.all_reduce_sum(torch.tensor([float(count)], dtype=torch.float64, device=context.device))
        for tensor in sums.values():
            resources.all_reduce_sum(tensor)
        return {name: tensor / max(float(total), 1.0) for name, tensor in sums.items()}

    def end_task(self, model: nn.Module, resources: TaskResources) -> None:
        """Add the task's Fisher to the decayed old one and anchor at the current parameters."""
        fisher = self.task_fisher(model, resources)
        decay = self.config.ewc.fisher_decay
        for name, old in self.fisher.items():
            if name in fisher:
                leading_block(fisher[name], old.shape).add_(decay * old)
        self.fisher = fisher
        self.anchor = {name: p.detach().clone() for name, p in model.named_parameters() if name in fisher}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "fisher": dict(self.fisher), "anchor": dict(self.anchor)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.fisher = {name: tensor.to(device) for name, tensor in state["fisher"].items()}
        self.anchor = {name: tensor.to(device) for name, tensor in state["anchor"].items()}
