"""Triton-specific checks of the fused Bernoulli distillation kernel (``cign_fast.kernels.bernoulli_distill_kl``):
row and column tiles just past their sizes, unaligned column ranges, broadcast (stride 0) inputs,
the log1p series, the low-precision gradients' rounding, and that the kernel compiles for sm_90.
The generic comparison with the reference for every backend is in ``test_bernoulli_distill_kl.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import cign_fast.kernels as kernels
from cign_fast.ops.bernoulli_distill_kl import OP
from cign_fast.ops.reference import bernoulli_distill_kl_forward as reference_forward


@pytest.fixture
def device() -> torch.device:
    from helpers import require_backend

    return require_backend("triton", OP)


def compare(student, teacher, start, stop, temperature, reduction, rtol=1e-5, atol=1e-6):
    loss, grad = kernels.bernoulli_distill_kl_forward(student, teacher, start, stop, temperature, reduction)
    want_loss, want_grad = reference_forward(
        student.cpu().double(), teacher.cpu().double(), start, stop, temperature, reduction
    )
    assert grad.shape == student.shape and grad.dtype == student.dtype and loss.dtype == torch.float32
    torch.testing.assert_close(loss.cpu().double(), want_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=1e-4, atol=atol)
    return grad


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_two_column_chunks_and_unaligned_range(device, reduction):
    """K = 1030 > BLOCK_K = 1024: two chunks; the range [3, 1029) starts off a chunk boundary and
    ends in the second chunk; R = 5 rows span two row blocks of 4."""
    generator = torch.Generator().manual_seed(0)
    student, teacher = (3 * torch.randn(5, 1030, generator=generator).to(device) for _ in range(2))
    grad = compare(student, teacher, 3, 1029, 2.0, reduction)
    assert torch.count_nonzero(grad[:, :3]) == 0 and torch.count_nonzero(grad[:, 1029:]) == 0


def test_many_short_rows(device):
    """K = 17 (BLOCK_K 32): 128 rows per program, R = 300 leaves a partial last row block."""
    generator = torch.Generator().manual_seed(1)
    student, teacher = (torch.randn(300, 17, generator=generator).to(device) for _ in range(2))
    compare(student, teacher, 0, 17, 1.0, "sum", rtol=1e-5, atol=1e-5)


def test_broadcast_teacher_with_zero_row_stride(device):
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(6, 12, generator=generator).to(device)
    teacher = torch.randn(1, 12, generator=generator).to(device).expand(6, 12)
    assert teacher.stride() == (0, 1)
    compare(student, teacher, 1, 11, 3.0, "batchmean")


def test_log1p_series_over_its_whole_range(device):
    """Teacher logit 0 and student logits from -60 to 60: softplus(b) takes e^-|b| from 1 down to
    1e-26, every argument the log1p series sees; the per-element KL keeps float32 precision."""
    student = torch.linspace(-60.0, 60.0, 241, device=device)[:, None]
    teacher = torch.zeros_like(student)
    compare(student, teacher, 0, 1, 1.0, "none", rtol=2e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_gradient_is_the_float32_gradient_rounded(device, dtype):
    """The gradient is computed in float32 and rounded once to the input dtype (to nearest): within
    half a unit of the float64 reference, and the loss keeps float32 precision."""
    generator = torch.Generator().manual_seed(4)
    student, teacher = (3 * torch.randn(16, 50, generator=generator).to(device, dtype) for _ in range(2))
    loss, grad = kernels.bernoulli_distill_kl_forward(student, teacher, 0, 45, 2.0, "sum")
    want_loss, want_grad = reference_forward(student.cpu().double(), teacher.cpu().double(), 0, 45, 2.0, "sum")
    torch.testing.assert_close(loss.cpu().double(), want_loss, rtol=1e-5, atol=1e-5)
    ulp = torch.finfo(dtype).eps * want_grad.abs()
    assert ((grad.cpu().double() - want_grad).abs() <= ulp / 2 + 1e-6).all()


COMPILE_PROBE = """
import json

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from cign_fast.kernels import bernoulli_distill_kl as module

results = []
for dtype, (rows, width) in (("bf16", (384, 220)), ("fp32", (3, 1030))):
    block_r, block_k = module.tile_shape(rows, width)
    pointers = {"student_ptr": "*" + dtype, "teacher_ptr": "*" + dtype, "grad_ptr": "*" + dtype, "loss_ptr": "*fp32"}
    integers = ("student_stride_r", "student_stride_k", "teacher_stride_r", "teacher_stride_k", "R", "K", "start",
                "stop")
    signature = {**pointers, **dict.fromkeys(integers, "i64"), "temperature": "fp32", "grad_scale": "fp32",
                 "BLOCK_R": "constexpr", "BLOCK_K": "constexpr"}
    kernel = module._bernoulli_kl_kernel
    constexprs = {(kernel.arg_names.index("BLOCK_R"),): block_r, (kernel.arg_names.index("BLOCK_K"),): block_k}
    binary = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": module.NUM_WARPS})
    results.append({"dtype": dtype, "tile": [block_r, block_k], "ptx_bytes": len(binary.asm["ptx"]),
                    "log_calls": binary.asm["ptx"].count("lg2.approx")})
print(json.dumps(results))
"""


def test_kernel_compiles_for_sm90():
    """Compiled (not interpreted) Triton, targeting sm_90 without a GPU: bfloat16 (rounded stores) at
    CIGN's head size and float32 at two column chunks, with the tiles the launcher picks; the PTX
    takes no approximate logarithm (log1p is the series)."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = json.loads(result.stdout.strip().splitlines()[-1])
    assert [entry["dtype"] for entry in compiled] == ["bf16", "fp32"]
    assert all(entry["ptx_bytes"] > 0 and entry["log_calls"] == 0 for entry in compiled)
    assert [entry["tile"] for entry in compiled] == [[16, 256], [4, 1024]]
