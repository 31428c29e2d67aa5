"""Fused class-token distillation KL in Triton: loss and student gradient in one launch.

Contract: ``cign_fast.ops.reference.token_distill_kl_forward``. Grid (cdiv(R, BLOCK_R),): a program
owns BLOCK_R rows and makes two sweeps over them:

1. over the distilled columns [start, stop) in BLOCK_K chunks: online max and sum of exp of
   z_s = student / T and z_t = teacher / T (the two log-sum-exps, kept as max and log-sum apart);
2. over all K columns: on [start, stop) log p = (z - max) - log sum, shifted before anything else so a
   constant offset of any size added to a row changes nothing beyond the rounding of the inputs,
   the KL term p_t (log p_t - log p_s) summed
   into the row loss (the reference's formula, so student == teacher gives exactly 0) and the
   gradient T (p_s - p_t) * grad_scale; 0 outside the range. The gradient is written once in the
   student's dtype.

Inputs are read through their strides (int64 offsets, so a transposed [R, K] view with R*K >=
2**31 is addressed correctly), twice over the column range and never copied; the only
outputs are the gradient [R, K] (contiguous) and the per-row loss [R] float32, reduced after the
launch with ``contract.reduce_rows`` (deterministic, no atomics). Tiles: BLOCK_K up to 1024
columns, BLOCK_R rows so that a tile holds at most MAX_TILE elements, 4 warps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cign_fast.contract import reduce_rows

from .utils import block_size, on_device, rounded_to, tile_offsets

MAX_TILE = 4096  # elements of one [BLOCK_R, BLOCK_K] tile


@triton.jit
def _scaled_logits(ptr, stride_r, stride_k, rows, cols, r_mask, col_mask, temperature):
    """``logits / T`` for the tile [rows, cols] in float32; 0 where a row or column is masked."""
    values = tl.load(
        ptr + tile_offsets(rows, stride_r, cols, stride_k), mask=r_mask[:, None] & col_mask[None, :], other=0.0
    )
    return values.to(tl.float32) / temperature


@triton.jit
def _distill_kl_kernel(
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
    max_s = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    max_t = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    sum_s = tl.zeros([BLOCK_R], dtype=tl.float32)
    sum_t = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(start, stop, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_mask = cols < stop
        z_s = _scaled_logits(student_ptr, student_stride_r, student_stride_k, rows, cols, r_mask, col_mask, temperature)
        z_t = _scaled_logits(teacher_ptr, teacher_stride_r, teacher_stride_k, rows, cols, r_mask, col_mask, temperature)
        z_s = tl.where(col_mask[None, :], z_s, float("-inf"))
        z_t = tl.where(col_mask[None, :], z_t, float("-inf"))
        new_max_s = tl.maximum(max_s, tl.max(z_s, axis=1))
        new_max_t = tl.maximum(max_t, tl.max(z_t, axis=1))
        sum_s = sum_s * tl.exp(max_s - new_max_s) + tl.sum(tl.exp(z_s - new_max_s[:, None]), axis=1)
        sum_t = sum_t * tl.exp(max_t - new_max_t) + tl.sum(tl.exp(z_t - new_max_t[:, None]), axis=1)
        max_s, max_t = new_max_s, new_max_t
    log_sum_s = tl.log(sum_s)
    log_sum_t = tl.log(sum_t)
    kl = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        in_range = (cols >= start) & (cols < stop)
        log_p_s = (
            _scaled_logits(student_ptr, student_stride_r, student_stride_k, rows, cols, r_mask, in_range, temperature)
            - max_s[:, None]
        ) - log_sum_s[:, None]
        log_p_t = (
            _scaled_logits(teacher_ptr, teacher_stride_r, teacher_stride_k, rows, cols, r_mask, in_range, temperature)
            - max_t[:, None]
        ) - log_sum_t[:, None]
        p_t = tl.exp(log_p_t)
        kl += tl.sum(tl.where(in_range[None, :], p_t * (log_p_t - log_p_s), 0.0), axis=1)
        grad = (temperature * grad_scale) * (tl.exp(log_p_s) - p_t)
        grad = tl.where(in_range[None, :], grad, 0.0)
        tl.store(
            grad_ptr + rows[:, None] * K + cols[None, :],
            rounded_to(grad, grad_ptr.dtype.element_ty),
            mask=r_mask[:, None] & (cols < K)[None, :],
        )
    tl.store(loss_ptr + rows, kl * (temperature * temperature), mask=r_mask)


def token_distill_kl_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    start: int,
    stop: int,
    temperature: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad_student [R, K])``: the loss float32 (scalar, or [R] for ``'none'``), the gradient in the
    student's dtype for a unit upstream gradient. See ``reference.token_distill_kl_forward``."""
    rows, width = student.shape
    per_row = torch.empty(rows, dtype=torch.float32, device=student.device)
    grad = torch.empty((rows, width), dtype=student.dtype, device=student.device)
    grad_scale = 1.0 / max(rows, 1) if reduction in ("batchmean", "mean") else 1.0
    block_k = block_size(width, 1024)
    block_r = block_size(rows, max(1, MAX_TILE // block_k), minimum=1)
    with on_device(student):
        _distill_kl_kernel[(triton.cdiv(rows, block_r),)](
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
            num_warps=4,
        )
    return reduce_rows(per_row, reduction), grad
