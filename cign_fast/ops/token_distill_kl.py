"""``token_distill_kl``: the class-token distillation KL, loss and student gradient in one pass.

``loss = T^2 * KL(softmax(teacher[:, cols] / T) || softmax(student[:, cols] / T))`` per row, reduced.
Registered as the custom op ``cign_fast::token_distill_kl_fwd``; its forward already produces the
student gradient, so the registered backward only scales it by the upstream gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cign_fast.ops.backends import backend_function, select_backend
from cign_fast.ops.checks import (
    check_choice, check_finite, check_float_tensor, check_positive, check_same_device, check_same_dtype,
)
from cign_fast.ops.reference import REDUCTIONS


@torch.library.custom_op("cign_fast::token_distill_kl_fwd", mutates_args=())
def token_distill_kl_fwd(
    student: Tensor, teacher: Tensor, start: int, stop: int, temperature: float, reduction: str, backend: str,
) -> tuple[Tensor, Tensor]:
    """Returns ``(loss, grad_student)``, see ``reference.token_distill_kl_forward``."""
    forward = backend_function(backend, "token_distill_kl_forward")
    return tuple(forward(student, teacher, start, stop, temperature, reduction))


@token_distill_kl_fwd.register_fake
def _(student, teacher, start, stop, temperature, reduction, backend):
    stat = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss_shape = (student.shape[0],) if reduction == "none" else ()
    return student.new_empty(loss_shape, dtype=stat), student.new_empty(student.shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.reduction = inputs[5]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _unused_grad):
    (grad_student,) = ctx.saved_tensors
    scale = grad_loss.unsqueeze(-1) if ctx.reduction == "none" else grad_loss
    return (grad_student * scale).to(grad_student.dtype), None, None, None, None, None, None


token_distill_kl_fwd.register_autograd(_backward, setup_context=_setup_context)


def column_range(columns: slice | tuple[int, int] | None, width: int) -> tuple[int, int]:
    """``columns`` as ``(start, stop)`` within ``width`` classes; step-1 slices only."""
    if columns is None:
        return 0, width
    if isinstance(columns, tuple) and len(columns) == 2:
        columns = slice(*columns)
    if not isinstance(columns, slice) or columns.step not in (None, 1):
        raise ValueError(f"columns: expected None, a step-1 slice or a (start, stop) pair, got {columns!r}")

    def clamp(bound: int | None, default: int) -> int:  # slice.indices, written out: Dynamo cannot trace it
        bound = default if bound is None else bound
        return min(max(bound + width if bound < 0 else bound, 0), width)

    start, stop = clamp(columns.start, 0), clamp(columns.stop, width)
    if stop <= start:
        raise ValueError(f"columns: expected a non-empty range of the {width} classes, got {columns!r}")
    return start, stop


def token_distill_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 2.0,
    columns: slice | tuple[int, int] | None = None,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Temperature-scaled KL distillation of the old classes' logits.

    Args:
        student_logits, teacher_logits: [R, K] (any strides); the teacher is treated as a constant.
        temperature: T > 0; the loss is multiplied by T^2.
        columns: the classes to distil (the old ones), a slice or ``(start, stop)``; all if ``None``.
        reduction: ``"batchmean"`` (sum / R, the default), ``"mean"`` (the same), ``"sum"`` or ``"none"`` ([R]).

    Returns:
        The loss (a scalar, or [R] for ``"none"``), float32 (float64 for float64 inputs).
    """
    check_float_tensor("student_logits", student_logits, 2)
    check_float_tensor("teacher_logits", teacher_logits, 2)
    check_same_device(student_logits=student_logits, teacher_logits=teacher_logits)
    check_same_dtype(student_logits=student_logits, teacher_logits=teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits: expected the student's shape {tuple(student_logits.shape)}, got {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] == 0:
        raise ValueError("student_logits: expected at least one row, got shape " f"{tuple(student_logits.shape)}")
    check_positive("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    start, stop = column_range(columns, student_logits.shape[1])
    if not torch.compiler.is_compiling():
        check_finite("student_logits", student_logits[:, start:stop])
        check_finite("teacher_logits", teacher_logits[:, start:stop])
    name = select_backend(backend, "token_distill_kl_forward", student_logits.device, student_logits.dtype)
    loss, _ = token_distill_kl_fwd(student_logits, teacher_logits.detach(), start, stop, float(temperature), reduction, name)
    return loss
