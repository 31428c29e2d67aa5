"""``token_distill_kl``: the class-token distillation KL, loss and student gradient in one pass.

``loss = T^2 * KL(softmax(teacher[:, cols] / T) || softmax(student[:, cols] / T))`` per row, reduced.
Registered as the custom op ``cign_fast::token_distill_kl_fwd``; its forward already produces the
student gradient, so the registered backward only scales it by the upstream gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cign_fast.ops.backends import backend_function, select_backend
from cign_fast.ops.distill import check_distill_arguments, register_distill_op


@torch.library.custom_op("cign_fast::token_distill_kl_fwd", mutates_args=())
def token_distill_kl_fwd(
    student: Tensor,
    teacher: Tensor,
    start: int,
    stop: int,
    temperature: float,
    reduction: str,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Returns ``(loss, grad_student)``, see ``reference.token_distill_kl_forward``."""
    forward = backend_function(backend, "token_distill_kl_forward")
    return tuple(forward(student, teacher, start, stop, temperature, reduction))


register_distill_op(token_distill_kl_fwd)


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
    start, stop = check_distill_arguments(student_logits, teacher_logits, temperature, columns, reduction)
    name = select_backend(backend, "token_distill_kl_forward", student_logits.device, student_logits.dtype, "")
    loss, _ = token_distill_kl_fwd(
        student_logits, teacher_logits.detach(), start, stop, float(temperature), reduction, name
    )
    return loss
