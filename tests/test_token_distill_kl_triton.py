"""Triton-specific checks of the fused distillation kernel (``cign_fast.kernels.token_distill_kl``):
row and column tiles just past their sizes, unaligned column ranges, broadcast (stride 0) inputs,
large logits and the bfloat16 gradient's rounding. The generic comparison with the reference for
every backend is in ``test_token_distill_kl.py``."""

from __future__ import annotations

import pytest
import torch

import cign_fast.kernels as kernels
from cign_fast.ops.reference import token_distill_kl_forward as reference_forward

OP = "token_distill_kl_forward"


@pytest.fixture
def device() -> torch.device:
    from helpers import require_backend

    return require_backend("triton", OP)


def compare(student, teacher, start, stop, temperature, reduction, rtol=1e-5, atol=1e-6):
    loss, grad = kernels.token_distill_kl_forward(student, teacher, start, stop, temperature, reduction)
    want_loss, want_grad = reference_forward(
        student.cpu().double(), teacher.cpu().double(), start, stop, temperature, reduction
    )
    assert grad.shape == student.shape and grad.dtype == student.dtype and loss.dtype == torch.float32
    torch.testing.assert_close(loss.cpu().double(), want_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=1e-4, atol=atol)
    return grad


@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_two_column_chunks_and_unaligned_range(device, reduction):
    """K = 1030 > BLOCK_K = 1024: two chunks in both sweeps; the range [3, 1029) starts off a chunk
    boundary and ends in the second chunk; R = 5 rows span two row blocks of 4."""
    torch.manual_seed(0)
    student, teacher = (3 * torch.randn(5, 1030, device=device) for _ in range(2))
    grad = compare(student, teacher, 3, 1029, 2.0, reduction)
    assert torch.count_nonzero(grad[:, :3]) == 0 and torch.count_nonzero(grad[:, 1029:]) == 0


def test_many_short_rows(device):
    """K = 17 (BLOCK_K 32): 128 rows per program, R = 300 leaves a partial last row block."""
    torch.manual_seed(1)
    student, teacher = (torch.randn(300, 17, device=device) for _ in range(2))
    compare(student, teacher, 0, 17, 1.0, "sum", rtol=1e-5, atol=1e-5)


def test_broadcast_teacher_with_zero_row_stride(device):
    torch.manual_seed(2)
    student = torch.randn(6, 12, device=device)
    teacher = torch.randn(1, 12, device=device).expand(6, 12)
    assert teacher.stride() == (0, 1)
    compare(student, teacher, 1, 11, 3.0, "batchmean")


def test_large_logits_stay_finite(device):
    """Logits of +-1e4 (exp would overflow without the log-sum-exp shifts)."""
    torch.manual_seed(3)
    student, teacher = (1e4 * torch.randn(4, 40, device=device) for _ in range(2))
    loss, grad = kernels.token_distill_kl_forward(student, teacher, 0, 40, 2.0, "none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    compare(student, teacher, 0, 40, 2.0, "none", rtol=1e-5, atol=1e-2)


def test_bfloat16_gradient_is_the_float32_gradient_rounded(device):
    """The gradient is computed in float32 and rounded once to bfloat16 (to nearest): within one
    bfloat16 unit of the float64 reference, and the loss keeps float32 precision."""
    torch.manual_seed(4)
    student, teacher = (3 * torch.randn(16, 50, device=device).bfloat16() for _ in range(2))
    loss, grad = kernels.token_distill_kl_forward(student, teacher, 0, 45, 2.0, "sum")
    want_loss, want_grad = reference_forward(student.cpu().double(), teacher.cpu().double(), 0, 45, 2.0, "sum")
    torch.testing.assert_close(loss.cpu().double(), want_loss, rtol=1e-5, atol=1e-5)
    ulp = torch.finfo(torch.bfloat16).eps * want_grad.abs()
    assert ((grad.cpu().double() - want_grad).abs() <= ulp / 2 + 1e-6).all()
