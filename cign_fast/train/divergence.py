"""Stopping a run whose training diverges, without a host synchronisation per step.

Every step, :meth:`DivergenceMonitor.observe` compares the step's total loss with the first loss seen
for the task in this session, on the device: a loss that is NaN, infinite, or above
``run.divergence_factor`` times that first loss marks the step as diverged (the first such step of
the interval keeps its index and loss terms on the device). :meth:`DivergenceMonitor.check` reads
that flag once per :data:`CHECK_EVERY_STEPS` steps and at the end of each epoch (one synchronisation,
and under DDP one all-reduce, so every rank stops together) and raises :class:`TrainingDiverged`
naming task, epoch, step, learning rate and loss terms.

The check runs before the epoch's outputs and checkpoint are written, so a diverged run's files end
at its last good checkpoint. Weights that overflow can make the next forward fail an op's input check
(NaN or inf inside the model) before any loss shows it; :meth:`DivergenceMonitor.raise_if_diverged`
turns such a failure on a finite batch into the same report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from cign_fast.train.distributed import DistContext, all_reduce_sum

CHECK_EVERY_STEPS = 10
NON_FINITE_MARKERS = ("contains NaN", "contains inf")  # how the ops' input checks report them


class TrainingDiverged(ValueError):
    """The loss became non-finite or exploded; the message says where and what to do."""


class DivergenceMonitor:
    """See the module docstring. ``loss_keys[0]`` is the total loss; ``factor`` 0 checks finiteness only."""

    def __init__(
        self,
        loss_keys: Sequence[str],
        factor: float,
        context: DistContext,
        num_tasks: int,
        epochs: int,
        last_checkpoint: Callable[[], Path | None],
    ) -> None:
        self.loss_keys = tuple(loss_keys)
        self.factor = factor
        self.context = context
        self.num_tasks = num_tasks
        self.epochs = epochs
        self.last_checkpoint = last_checkpoint
        self.task: int | None = None
        self.first_loss: Tensor | None = None
        self.last_update: tuple[int, int, float, Tensor] | None = None  # (epoch, step, lr, loss terms)
        self.reset_interval()

    def reset_interval(self) -> None:
        device = self.context.device
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_terms = torch.zeros(len(self.loss_keys), dtype=torch.float64, device=device)
        self.learning_rates: dict[int, float] = {}

    def observe(self, task: int, epoch: int, step: int, lr: float, losses: dict[str, Tensor]) -> None:
        """Record one step's losses (device tensors; nothing is read back to the host)."""
        terms = torch.stack([losses[key].detach().double() for key in self.loss_keys])
        if task != self.task or self.first_loss is None:
            self.task, self.first_loss = task, terms[0].abs()
        total = terms[0]
        bad = ~torch.isfinite(total)
        if self.factor > 0:
            bad |= total > self.factor * self.first_loss
        first_bad = bad & (self.bad_step < 0)
        self.bad_step = torch.where(first_bad, torch.full_like(self.bad_step, step), self.bad_step)
        self.bad_terms = torch.where(first_bad, terms, self.bad_terms)
        self.learning_rates[step] = lr
        self.last_update = (epoch, step, lr, terms)

    def check(self, task: int, epoch: int, parameters: Sequence[Tensor] = ()) -> None:
        """Raise :class:`TrainingDiverged` when a step since the last check diverged, or (given ``parameters``,
        as at the end of an epoch, before its checkpoint) the weights hold NaN or inf; on any rank."""
        weights_bad = torch.zeros((), dtype=torch.bool, device=self.context.device)
        if parameters:
            weights_bad = ~torch.stack([torch.isfinite(parameter).all() for parameter in parameters]).all()
        flags = torch.stack([self.bad_step >= 0, weights_bad]).to(torch.int64)
        loss_bad_here, weights_bad_here = flags.tolist()
        if int(all_reduce_sum(flags, self.context).sum().item()) == 0:
            self.reset_interval()
            return
        if loss_bad_here:
            problem = self._describe_step(int(self.bad_step.item()), self.learning_rates, self.bad_terms)
            if self.factor > 0 and self.first_loss is not None and torch.isfinite(self.bad_terms[0]):
                problem += (
                    f"; more than run.divergence_factor = {self.factor:g} times the task's first loss "
                    f"{float(self.first_loss):.4g}"
                )
        elif weights_bad_here:
            problem = self._describe_last_update("the weights turned NaN or inf")
        else:
            problem = "on another process"
        raise TrainingDiverged(self._message(task, epoch, problem))

    def raise_if_diverged(
        self, error: ValueError, inputs: Iterable[Tensor], parameters: Iterable[Tensor], task: int, epoch: int
    ) -> None:
        """After a step failed with ``error``: raise :class:`TrainingDiverged` when the batch is finite but the
        model is not (NaN or inf in its weights, or found by an op's input check inside the forward)."""
        if not all(bool(torch.isfinite(tensor).all()) for tensor in inputs):
            return  # a bad clip, not the model
        weights_finite = all(bool(torch.isfinite(parameter).all()) for parameter in parameters)
        if weights_finite and not any(marker in str(error) for marker in NON_FINITE_MARKERS):
            return
        if int(self.bad_step.item()) >= 0:
            problem = self._describe_step(int(self.bad_step.item()), self.learning_rates, self.bad_terms)
        else:
            problem = self._describe_last_update("the model turned NaN or inf on finite inputs")
        raise TrainingDiverged(self._message(task, epoch, f"{problem} [{error}]")) from error

    def _describe_step(self, step: int, learning_rates: dict[int, float], terms: Tensor) -> str:
        values = terms.tolist()
        named = ", ".join(f"{key} {value:.4g}" for key, value in zip(self.loss_keys[1:], values[1:], strict=True))
        lr = learning_rates.get(step)
        return f"step {step}{'' if lr is None else f' (lr {lr:.4g})'}: loss {values[0]:.4g} ({named})"

    def _describe_last_update(self, what: str) -> str:
        if self.last_update is None:
            return f"{what} before any step of this session"
        epoch, step, lr, terms = self.last_update
        return f"{what} in the update of epoch {epoch + 1} {self._describe_step(step, {step: lr}, terms)}"

    def _message(self, task: int, epoch: int, problem: str) -> str:
        checkpoint = self.last_checkpoint()
        where = (
            f"its files end at the last good checkpoint {checkpoint}, which --resume continues from"
            if checkpoint is not None
            else "no checkpoint was written before it"
        )
        return (
            f"training diverged in task {task + 1}/{self.num_tasks}, epoch {epoch + 1}/{self.epochs}, {problem}; "
            f"{where}. A lower optim.lr or optim.grad_clip > 0 (a new run) usually avoids it"
        )
