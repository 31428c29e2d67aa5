"""Fused per-class Bernoulli distillation KL in Triton: loss and student gradient in one launch.

Contract: ``cign_fast.ops.reference.bernoulli_distill_kl_forward``. Grid (cdiv(R, BLOCK_R),): a
program owns BLOCK_R rows and sweeps once over all K columns in BLOCK_K chunks. On the distilled
columns [start, stop), with z = logits / T reflected so that the teacher's is <= 0
(``reference.reflected_logits``: a = -|z_t|, b = +-z_s), each element gives

    kl   = softplus(b) - softplus(a) - sigmoid(a) (b - a)      (summed into the row loss)
    grad = T * grad_scale * +-(sigmoid(b) - sigmoid(a))         (= T (p_s - p_t) / divisor)

from two exponentials, e^a and e^-|b|; outside the range the gradient is 0 and nothing is read.
Equal logits contribute exactly 0 to the loss (compiled Triton fuses multiply-adds, which may round
the two softpluses differently).
``log1p`` is the atanh series (``_log1p``), exact to float32 rounding whatever the compiled
``tl.log`` is (an approximate ``lg2`` on GPUs would lose ``log(1 + u)`` for small u).

Inputs are read through their strides (int64 offsets) once and never copied; the outputs are the
gradient [R, K] (contiguous, the student's dtype, rounded once from float32) and the per-row loss
[R] float32, reduced after the launch with ``reference.reduce_bernoulli_rows`` (deterministic, no
atomics). Tiles: ``tile_shape``, 4 warps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cign_fast.contract import bernoulli_divisor, reduce_bernoulli_rows

from .utils import block_size, on_device, rounded_to, tile_offsets

MAX_TILE = 4096  # elements of one [BLOCK_R, BLOCK_K] tile
NUM_WARPS = 4


def tile_shape(rows: int, width: int) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_K)`` for logits [rows, width]: BLOCK_K up to 1024 columns, then as many rows
    (a power of two) as fit in MAX_TILE elements."""
    block_k = block_size(width, 1024)
    return block_size(rows, max(1, MAX_TILE // block_k), minimum=1), block_k


@triton.jit
def _log1p(u):
    """``log(1 + u)`` for u in [0, 1]: ``2 atanh(y)``, y = u / (2 + u) <= 1/3, by its series up to y^13
    (the next term is below float32's rounding of the sum)."""
    y = u / (2.0 + u)
    y2 = y * y
    series = 1.0 / 13.0
    series = series * y2 + 1.0 / 11.0
    series = series * y2 + 1.0 / 9.0
    series = series * y2 + 1.0 / 7.0
    series = series * y2 + 1.0 / 5.0
    series = series * y2 + 1.0 / 3.0
    series = series * y2 + 1.0
    return 2.0 * y * series


@triton.jit
def _bernoulli_kl_kernel(
    student_ptr,
    teacher_ptr,
    grad_ptr,
    loss_ptr,
    student_stride_r,
    student_stride_k,
    teacher_stride_r,
    teacher_stride_k,
    R,
    K,
    start,
    stop,
    temperature,
    grad_scale,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per-row loss [R] (float32) and gradient [R, K] (contiguous, the student's dtype)."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    r_mask = rows < R
    kl = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        in_range = (cols >= start) & (cols < stop)
        tile_mask = r_mask[:, None] & in_range[None, :]
        z_s = (
            tl.load(
                student_ptr + tile_offsets(rows, student_stride_r, cols, student_stride_k), mask=tile_mask, other=0.0
            ).to(tl.float32)
            / temperature
        )
        z_t = (
            tl.load(
                teacher_ptr + tile_offsets(rows, teacher_stride_r, cols, teacher_stride_k), mask=tile_mask, other=0.0
            ).to(tl.float32)
            / temperature
        )
        flip = z_t > 0.0
        a = tl.where(flip, -z_t, z_t)
        b = tl.where(flip, -z_s, z_s)
        exp_a = tl.exp(a)  # e^a in (0, 1]
        exp_b = tl.exp(-tl.abs(b))  # e^-|b| in (0, 1]
        sigmoid_a = exp_a / (1.0 + exp_a)
        sigmoid_b = tl.where(b >= 0.0, 1.0, exp_b) / (1.0 + exp_b)
        softplus_b = tl.maximum(b, 0.0) + _log1p(exp_b)
        element = softplus_b - _log1p(exp_a) - sigmoid_a * (b - a)
        kl += tl.sum(tl.where(tile_mask & (a != b), element, 0.0), axis=1)
        p_diff = sigmoid_b - sigmoid_a
        grad = (temperature * grad_scale) * tl.where(flip, -p_diff, p_diff)
        grad = tl.where(in_range[None, :], grad, 0.0)
        tl.store(
            grad_ptr + rows[:, None] * K + cols[None, :],
            rounded_to(grad, grad_ptr.dtype.element_ty),
            mask=r_mask[:, None] & (cols < K)[None, :],
        )
    tl.store(loss_ptr + rows, kl * (temperature * temperature), mask=r_mask)


def bernoulli_distill_kl_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    start: int,
    stop: int,
    temperature: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad_student [R, K])``: the loss float32 (scalar, or [R] for ``'none'``), the gradient in the
    student's dtype for a unit upstream gradient. See ``reference.bernoulli_distill_kl_forward``."""
    rows, width = student.shape
    per_row = torch.empty(rows, dtype=torch.float32, device=student.device)
    grad = torch.empty((rows, width), dtype=student.dtype, device=student.device)
    grad_scale = 1.0 / bernoulli_divisor(reduction, rows, stop - start)
    block_r, block_k = tile_shape(rows, width)
    with on_device(student):
        _bernoulli_kl_kernel[(triton.cdiv(rows, block_r),)](
            student,
            teacher,
            grad,
            per_row,
            *student.stride(),
            *teacher.stride(),
            rows,
            width,
            start,
            stop,
            temperature,
            grad_scale,
            BLOCK_R=block_r,
            BLOCK_K=block_k,
            num_warps=NUM_WARPS,
        )
    return reduce_bernoulli_rows(per_row, reduction, stop - start), grad
