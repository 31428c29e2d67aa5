"""``bernoulli_distill_kl``: per-class Bernoulli distillation KL, loss and student gradient in one pass.

CIGN's heads are per-class sigmoids, so each old class is a Bernoulli: with ``z = logits / T``,
``loss_r = T^2 * sum_c KL(Bern(sigmoid(z_t)) || Bern(sigmoid(z_s)))`` over the distilled columns,
reduced. Unlike ``token_distill_kl`` (a softmax over the old columns), it sees a uniform shift of
the old logits. Registered as the custom op ``cign_fast::bernoulli_distill_kl_fwd``; its forward
already produces the student gradient ``T * (p_s - p_t)`` (scaled by the reduction), so the
registered backward only scales it by the upstream gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cign_fast.ops.backends import backend_function, select_backend
from cign_fast.ops.distill import check_distill_arguments, register_distill_op

OP = "bernoulli_distill_kl_forward"


@torch.library.custom_op("cign_fast::bernoulli_distill_kl_fwd", mutates_args=())
def bernoulli_distill_kl_fwd(
    student: Tensor,
    teacher: Tensor,
    start: int,
    stop: int,
    temperature: float,
    reduction: str,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Returns ``(loss, grad_student)``, see ``reference.bernoulli_distill_kl_forward``."""
    forward = backend_function(backend, OP)
    return tuple(forward(student, teacher, start, stop, temperature, reduction))


register_distill_op(bernoulli_distill_kl_fwd)


def bernoulli_distill_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    columns: slice | tuple[int, int] | None = None,
    reduction: str = "batchmean",
    backend: str = "auto",
) -> Tensor:
    """Temperature-scaled per-class Bernoulli KL distillation of the old classes' sigmoid logits.

    Args:
        student_logits, teacher_logits: [R, K] (any strides); the teacher is treated as a constant.
        temperature: T > 0; the logits are divided by T and the loss multiplied by T^2.
        columns: the classes to distil (the old ones), a slice or ``(start, stop)``; all if ``None``.
        reduction: ``"batchmean"`` (sum / R, the default), ``"sum"``, ``"none"`` ([R]) or ``"mean"``
            (sum / (R * number of columns): the mean over elements, like ``kl_div``'s ``'mean'``; it
            differs from ``"batchmean"`` by the number of columns, unlike ``token_distill_kl``'s).

    Returns:
        The loss (a scalar, or [R] for ``"none"``), float32 (float64 for float64 inputs).
    """
    start, stop = check_distill_arguments(student_logits, teacher_logits, temperature, columns, reduction)
    name = select_backend(backend, OP, student_logits.device, student_logits.dtype, "")
    loss, _ = bernoulli_distill_kl_fwd(
        student_logits, teacher_logits.detach(), start, stop, float(temperature), reduction, name
    )
    return loss
