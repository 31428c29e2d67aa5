"""What the distillation ops share: the column range, the argument checks and the custom-op wiring.

``token_distill_kl`` and ``bernoulli_distill_kl`` both take student and teacher logits [R, K], a
column range (the old classes), a temperature and a reduction, and both are custom ops
``(student, teacher, start, stop, temperature, reduction, backend) -> (loss, grad_student)`` whose
forward already produces the student gradient: the registered backward only scales it by the
upstream gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cign_fast.ops.checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive,
    check_same_device,
    check_same_dtype,
)
from cign_fast.ops.reference import REDUCTIONS


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


def check_distill_arguments(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    columns: slice | tuple[int, int] | None,
    reduction: str,
) -> tuple[int, int]:
    """Check the public arguments of a distillation op; returns the column range ``(start, stop)``.

    Student and teacher: floating-point [R, K] tensors of one shape, dtype and device, R >= 1, finite
    on the distilled columns (not scanned under ``torch.compile``); ``temperature > 0``."""
    check_float_tensor("student_logits", student_logits, 2)
    check_float_tensor("teacher_logits", teacher_logits, 2)
    check_same_device(student_logits=student_logits, teacher_logits=teacher_logits)
    check_same_dtype(student_logits=student_logits, teacher_logits=teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits: expected the student's shape {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] == 0:
        raise ValueError(f"student_logits: expected at least one row, got shape {tuple(student_logits.shape)}")
    check_positive("temperature", temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    start, stop = column_range(columns, student_logits.shape[1])
    if not torch.compiler.is_compiling():
        check_finite("student_logits", student_logits[:, start:stop])
        check_finite("teacher_logits", teacher_logits[:, start:stop])
    return start, stop


def register_distill_op(op: torch.library.CustomOpDef) -> None:
    """Register the fake (meta) kernel and the autograd of a distillation custom op ``op``."""

    def fake(student, teacher, start, stop, temperature, reduction, backend):
        stat = torch.float64 if student.dtype == torch.float64 else torch.float32
        loss_shape = (student.shape[0],) if reduction == "none" else ()
        return student.new_empty(loss_shape, dtype=stat), student.new_empty(student.shape)

    def setup_context(ctx, inputs, output) -> None:
        ctx.reduction = inputs[5]
        ctx.save_for_backward(output[1])

    def backward(ctx, grad_loss, _unused_grad):
        (grad_student,) = ctx.saved_tensors
        scale = grad_loss.unsqueeze(-1) if ctx.reduction == "none" else grad_loss
        return (grad_student * scale).to(grad_student.dtype), None, None, None, None, None, None

    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
