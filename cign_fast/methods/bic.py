"""BiC: Large Scale Incremental Learning (Wu, Chen, Wang, Ye, Liu, Guo, Fu, CVPR 2019), on the backbone.

* Held-out split: at a task t > 0, ``k = max(1, round(bic.val_fraction * m))`` clips per class are kept out
  of training, m the most exemplars an old class has: the last k exemplars of each old class (the memory
  lists them best first) and k random clips of each new class (seeded by ``run.seed``), so the held-out
  set is class-balanced as the paper's 9:1 split of old exemplars and new data is. Default 0.1 (the paper's).
* Stage 1 (the trainer's epochs, on the rest): ``(1 - lambda) * CE + lambda * KD`` per head with
  ``lambda = n / (n + m)`` (n old, m new classes; the paper's) and ``KD = KL_T`` of the old classes' logits
  against the previous model's bias-corrected logits, T = 2 (``bic.temperature``), without T^2 (the
  paper's L_d is the soft cross-entropy, which differs from the KL by a constant).
* Stage 2 (``end_task``): the model frozen, a bias layer ``q_k = alpha_t * o_k + beta_t`` acting only on task
  t's classes k is fit per head on the held-out clips, minimising their softmax cross-entropy over all
  classes. The paper fits it by SGD; the objective is convex in (alpha, beta) and the logits are fixed,
  so here it is fit by L-BFGS on the cached logits, which reaches the same minimum exactly and fast.
  Every task's layer is kept and applied to its own classes from then on (the old classes' logits pass
  through the earlier tasks' layers; task 0 has none); task t's layer is the identity during its stage 1.
* Audio-visual: the audio and visual heads each get their own bias layers; the audio-visual prediction is
  late fusion (argmax of the product of the two corrected posteriors, :mod:`cign_fast.methods.backbone`).
* Memory: BiC is a replay method; it refuses to run without exemplars. Departure: the trainer's Adam and
  schedule instead of the paper's SGD recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.backbone import BackboneMethod, BackboneOutput, classification_loss, distill_old_classes
from cign_fast.methods.base import TaskInfo, TaskResources, eval_outputs
from cign_fast.methods.registry import register_method
from cign_fast.model import ModelConfig
from cign_fast.model.losses import check_labels

if TYPE_CHECKING:  # importing it at run time would be circular
    from cign_fast.train.config import TrainConfig

HEADS = ("audio_logits", "visual_logits")
LBFGS_ITERATIONS = 100


def apply_bias(logits: Tensor, bias: Tensor, task_sizes: tuple[int, ...]) -> Tensor:
    """``logits`` [B, N] with task s's columns mapped to ``alpha_s * z + beta_s`` (``bias`` [T, 2] rows
    ``(alpha, beta)``, one per task of ``task_sizes`` that has one); columns beyond them unchanged."""
    alpha = torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device)
    beta = torch.zeros_like(alpha)
    start = 0
    for task, size in enumerate(task_sizes):
        if task < bias.shape[0]:
            alpha[start : start + size] = bias[task, 0]
            beta[start : start + size] = bias[task, 1]
        start += size
    return logits * alpha + beta


def fit_bias(logits: Tensor, labels: Tensor, first_new: int) -> Tensor:
    """``(alpha, beta)`` [2] minimising the cross-entropy of ``logits`` [n, N] (float64) with the columns
    ``first_new..`` mapped to ``alpha * z + beta``: BiC's stage 2 on fixed logits (L-BFGS, from (1, 0))."""
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    new = torch.arange(logits.shape[1]) >= first_new
    optimizer = torch.optim.LBFGS(
        [params],
        lr=1.0,
        max_iter=LBFGS_ITERATIONS,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        corrected = torch.where(new, logits * params[0] + params[1], logits)
        loss = F.cross_entropy(corrected, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return params.detach()


@register_method
class BiC(BackboneMethod):
    """Distillation on most of the data, then a per-task bias layer fit on the held-out rest (module docstring)."""

    name = "bic"
    loss_terms = ("ce_audio", "ce_visual", "kd")
    memory_use = "required"
    config_sections = ("bic",)
    uses_teacher = True

    def __init__(self, config: TrainConfig, model_config: ModelConfig) -> None:
        super().__init__(config, model_config)
        self.bias = torch.zeros(len(HEADS), 0, 2, dtype=torch.float64)  # [head, task, (alpha, beta)]; task 0: none
        self.validation: list[int] = []  # the task's held-out clips

    # ----- the held-out split -----------------------------------------------------------------------------

    def held_out(
        self, task: TaskInfo, clips_of_class: Callable[[int], list[int]], exemplars: Mapping[int, list[int]]
    ) -> list[int]:
        """The held-out clips of ``task`` (module docstring): none at the first task."""
        if task.index == 0 or not exemplars:
            return []
        per_class = max(1, round(self.config.bic.val_fraction * max(len(kept) for kept in exemplars.values())))
        held = [index for cls in sorted(exemplars) for index in exemplars[cls][-per_class:]]
        first, stop = task.class_range(task.index)
        for cls in range(first, stop):
            clips = clips_of_class(cls)
            generator = torch.Generator().manual_seed(self.config.run.seed * 100_003 + cls)
            order = torch.randperm(len(clips), generator=generator)[: min(per_class, len(clips) - 1)]
            held += [clips[position] for position in order.tolist()]
        return held

    def train_indices(
        self,
        task: TaskInfo,
        clips_of_task: Callable[[int], list[int]],
        exemplar_indices: list[int],
        *,
        clips_of_class: Callable[[int], list[int]] | None = None,
        exemplars: Mapping[int, list[int]] | None = None,
    ) -> list[int]:
        """The task's clips and the exemplars, less the held-out ones (kept in ``self.validation``)."""
        if clips_of_class is None or exemplars is None:
            raise ValueError("bic: train_indices needs clips_of_class and exemplars (the trainer passes them)")
        self.validation = self.held_out(task, clips_of_class, exemplars)
        held = set(self.validation)
        return [index for index in clips_of_task(task.index) + exemplar_indices if index not in held]

    # ----- batches --------------------------------------------------------------------------------------------

    def corrected(self, out: BackboneOutput, task_sizes: tuple[int, ...]) -> BackboneOutput:
        """``out`` with each head's logits through the bias layers fitted so far."""
        return out._replace(
            **{
                head: apply_bias(getattr(out, head), self.bias[number].to(getattr(out, head)), task_sizes)
                for number, head in enumerate(HEADS)
            }
        )

    def teacher_forward(
        self, audio: Tensor, visual: Tensor, out: BackboneOutput | None = None
    ) -> BackboneOutput | None:
        if self.teacher is None:
            return None
        return self.corrected(self.teacher(audio, visual), self.current_task.task_sizes[:-1])

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        task = self.current_task
        out = self.corrected(out, task.task_sizes)
        terms = classification_loss(out, labels)
        ce = terms["ce_audio"] + terms["ce_visual"]
        if teacher_out is None:
            return {**terms, "kd": out.audio_logits.new_zeros(()), "total": ce}
        temperature, backend = self.config.bic.temperature, self.model_config.backend
        kd = (
            distill_old_classes(out.audio_logits, teacher_out.audio_logits, temperature, backend)
            + distill_old_classes(out.visual_logits, teacher_out.visual_logits, temperature, backend)
        ) / temperature**2
        weight = task.num_old_classes / task.num_classes  # lambda = n / (n + m)
        return {
            "ce_audio": (1 - weight) * terms["ce_audio"],
            "ce_visual": (1 - weight) * terms["ce_visual"],
            "kd": weight * kd,
            "total": (1 - weight) * ce + weight * kd,
        }

    # ----- stage 2 --------------------------------------------------------------------------------------------

    def end_task(self, model: nn.Module, resources: TaskResources) -> None:
        """Fit task t's bias layer of each head on the held-out clips (every rank fits the same)."""
        task = resources.task
        if task.index == 0:
            return
        logits: dict[str, list[Tensor]] = {head: [] for head in HEADS}
        batches_labels: list[Tensor] = []
        for out, batch_labels in eval_outputs(model, resources.batches(self.validation)):
            out = self.corrected(out, task.task_sizes)
            for head in HEADS:
                logits[head].append(getattr(out, head).double().cpu())
            batches_labels.append(batch_labels.cpu())
        if not batches_labels:
            raise ValueError("bic: none of the held-out clips could be decoded; the bias layer needs some")
        labels = torch.cat(batches_labels)
        check_labels(labels, labels.shape[0], task.num_classes)
        first_new = task.num_old_classes
        fitted = torch.stack([fit_bias(torch.cat(logits[head]), labels, first_new) for head in HEADS])  # [2, 2]
        grown = torch.zeros(len(HEADS), task.index + 1, 2, dtype=torch.float64)
        grown[:, :, 0] = 1.0
        grown[:, : self.bias.shape[1]] = self.bias
        grown[:, task.index] = fitted
        self.bias = grown

    def predict(self, out: BackboneOutput) -> dict[str, Tensor]:
        return super().predict(self.corrected(out, self.current_task.task_sizes))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "bias": self.bias, "validation": list(self.validation)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.bias = state["bias"].cpu()
        self.validation = [int(index) for index in state["validation"]]
