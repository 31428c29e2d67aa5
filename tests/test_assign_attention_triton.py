"""Triton-specific checks of the assign-attention kernels (``cign_fast.kernels``).

The generic tests (``test_assign_attention.py``) hold every backend to the reference; these check
what only the Triton kernels have: the in-kernel noise, the tile boundaries of their loops, the
wide-C path, ties across N-blocks, 16-bit gradients far from 1, grids for batches past 65535, the
int64 tile offsets, the bfloat16 rounding helper (NaN included), and that every kernel the
launchers use compiles for sm_90 (H100/H200) with tensor-core dots, which works without a GPU.
Without CUDA the kernels run under ``TRITON_INTERPRET=1`` (set by ``conftest.py`` before import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

import cign_fast.kernels as kernels
from cign_fast.contract import MODES, AssignParams
from cign_fast.kernels.assign_attention import _column_stats_kernel, _map_offsets, _uniform_tile, tile_sizes
from cign_fast.kernels.utils import MAX_PROGRAMS, batch_grid, rounded_to, signed_int32, tile_offsets
from cign_fast.ops import reference
from cign_fast.ops.gumbel import gumbel_noise, seed_keys, uniform_from_index

OP = "assign_attention_forward"
TESTS_DIR = Path(__file__).resolve().parent
MODE_IDS = {name: index for index, name in enumerate(MODES)}


def params(
    mode: str, *, tau: float = 1.0, eps: float = 1.0, sum_assign: bool = False, seed: int = 0, return_maps: bool = False
) -> AssignParams:
    return AssignParams(
        mode=MODE_IDS[mode], tau=tau, eps=eps, sum_assign=sum_assign, seed=seed, return_maps=return_maps
    )


@pytest.fixture
def device() -> torch.device:
    from helpers import require_backend  # not at import: the compile probe imports this module without it

    return require_backend("triton", OP)


@triton.jit
def _uniform_map_kernel(out_ptr, N, S, key_a, key_b, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    """Writes the kernels' uniforms for a [1, N, S] map (one program)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_s = tl.arange(0, BLOCK_S)
    offsets = _map_offsets(tl.program_id(0).to(tl.int64), offs_n, offs_s, N, S)
    u = _uniform_tile(offsets.to(tl.uint32), key_a, key_b)
    tl.store(out_ptr + offsets, u, mask=(offs_n[:, None] < N) & (offs_s[None, :] < S))


@triton.jit
def _round_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, rounded_to(tl.load(x_ptr + offs), out_ptr.dtype.element_ty))


@triton.jit
def _tile_offsets_kernel(out_ptr, row_stride, col_stride, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Writes ``tile_offsets`` of a [ROWS, COLS] tile (one program) to an int64 [ROWS, COLS] tensor."""
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    tl.store(out_ptr + rows[:, None] * COLS + cols[None, :], tile_offsets(rows, row_stride, cols, col_stride))


@pytest.mark.parametrize("seed", [0, 7, 2**31 + 3, 2**40 + 5, 2**63 - 1])
def test_kernel_uniforms_equal_the_reference_bitwise(device, seed):
    groups, tokens = 5, 13
    key_a, key_b = (signed_int32(key) for key in seed_keys(seed))
    out = torch.zeros((1, groups, tokens), dtype=torch.float32, device=device)
    _uniform_map_kernel[(1,)](out, groups, tokens, key_a, key_b, BLOCK_N=8, BLOCK_S=16)
    expected = uniform_from_index(torch.arange(groups * tokens).view(1, groups, tokens), seed)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("seed, noise_batch", [(3, (0, 1)), (2**40 + 5, (0, 1)), (7, (5, 3))])
def test_kernel_noise_matches_the_reference(device, seed, noise_batch):
    shape = (3, 11, 17)
    got = kernels.gumbel_noise(shape, seed, device, *noise_batch).cpu()
    torch.testing.assert_close(got, gumbel_noise(shape, seed, "cpu", *noise_batch), rtol=0, atol=1e-6)


def run_both(q, k, v, mode, *, tau=0.9, eps=1.0, sum_assign=False, seed=11, return_maps=True):
    """Forward and backward of the Triton kernels and of the reference (float64) on the same inputs."""
    grad_out = torch.randn(q.shape, dtype=q.dtype, device=q.device)
    options = params(mode, tau=tau, eps=eps, sum_assign=sum_assign, seed=seed, return_maps=return_maps)
    got = kernels.assign_attention_forward(q, k, v, options)
    got_grads = kernels.assign_attention_backward(grad_out, q, k, v, *got[1:4], options)
    q64, k64, v64, g64 = (t.detach().cpu().double() for t in (q, k, v, grad_out))
    want = reference.assign_attention_forward(q64, k64, v64, options)
    want_grads = reference.assign_attention_backward(g64, q64, k64, v64, *want[1:4], options)
    return got, got_grads, want, want_grads


def assert_matches(got, got_grads, want, want_grads, rtol=1e-4, atol=1e-5):
    out, col_lse, col_argmax, row_sum, hard, soft = (t.cpu() for t in got)
    torch.testing.assert_close(out.double(), want[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(col_lse.double(), want[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(col_argmax, want[2]), "the kernels chose other groups than the reference"
    torch.testing.assert_close(row_sum.double(), want[3], rtol=1e-5, atol=1e-5)
    if hard.numel():
        assert torch.equal(hard.double(), want[4])
        torch.testing.assert_close(soft.double(), want[5], rtol=rtol, atol=atol)
    for name, grad, expected in zip("qkv", got_grads, want_grads, strict=True):
        torch.testing.assert_close(
            grad.cpu().double(), expected, rtol=rtol, atol=atol, msg=lambda m, name=name: f"grad {name}: {m}"
        )


@pytest.mark.parametrize("mode", reference.MODES)
def test_block_boundaries_just_above_the_tiles(device, mode):
    """N = 65 > BLOCK_N: two N-blocks in the column statistics and the backward's column sweeps;
    S = 33 just above the float32 token tile (32), C = 65 above two channel chunks (32) and one
    output slice (64). Two batch elements, so every kernel decodes (batch, tiles) from its one-axis
    grid, and the maps come from the first of two output slices."""
    tiles = tile_sizes(torch.float32, 65, 33, 65)
    assert tuple(tiles[:4]) == (64, 32, 32, 64)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, n, 65, device=device) for n in (65, 33, 33))
    assert_matches(*run_both(q, k, v, mode, sum_assign=mode == "hard"))


def test_ties_across_n_blocks_choose_the_first_group(device):
    """Rows 2 and 66 of q are equal: their logits are equal bit for bit, in different N-blocks."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, n, 16, device=device) for n in (70, 9, 9))
    q[:, 66] = q[:, 2]
    k[:, :] = q[:, 2:3] * 3.0 + 0.1 * k  # every token prefers group 2 (and its twin 66)
    got = kernels.assign_attention_forward(q, k, v, params("hard"))
    assert torch.equal(got[2].cpu(), torch.full((1, 9), 2, dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_channels_c1024(device, dtype):
    """C = 1024: 16 or 32 channel chunks per logits tile, several output slices per row block."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, n, 1024, device=device).to(dtype) for n in (3, 5, 5))
    got, got_grads, want, want_grads = run_both(q, k, v, "gumbel", return_maps=False)
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    assert torch.equal(got[2].cpu(), want[2])
    torch.testing.assert_close(got[0].cpu().double(), want[0], **tolerance)
    for grad, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(grad.cpu().double(), expected, **tolerance)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["soft", "gumbel"])
def test_16_bit_inputs_keep_float32_accuracy_up_to_the_output_rounding(device, dtype, mode):
    """The map operands of the 16-bit products are split into high and low halves, so the results are
    the float64 reference (on the rounded inputs) rounded once: within one unit in the last place."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, n, 24, device=device).to(dtype) for n in (17, 19, 19))
    got, got_grads, want, want_grads = run_both(q, k, v, mode, return_maps=False)
    assert torch.equal(got[2].cpu(), want[2])
    for result, expected in zip((got[0], *got_grads), (want[0], *want_grads), strict=True):
        ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(torch.finfo(dtype).tiny)
        excess = (result.cpu().double() - expected).abs() - ulp
        assert excess.max().item() <= 1e-5 * expected.abs().max().item()


def lopsided(shape: tuple[int, ...], factor: float, big_first: bool, dtype: torch.dtype) -> torch.Tensor:
    """Normal values times ``factor`` in one half of the channels and ``1 / factor`` in the other."""
    halves = torch.tensor([factor, 1 / factor]).repeat_interleave(shape[-1] // 2)
    return (torch.randn(shape) * (halves if big_first else halves.flip(0))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grad_scale", [1e4, 1e-6])
def test_16_bit_gradients_far_from_one(device, dtype, grad_scale):
    """dq and dk stay within one unit in the last place (norm-wise) of the float64 reference when the
    float32 map dz of the backward's products lies outside float16's comfortable range.

    grad_out * 1e4 (with v * 10 and small q, k, so that dq and dk fit float16): |dz| up to 2.3e5,
    past float16's 65504. grad_out * 1e-6: |dz| ~ 1e-6, inside float16's subnormals; q and k are
    lopsided (x300 and /300 in opposite channel halves) so that the logits stay O(1) while
    dq = scale dz k and dk = scale dz^T q are normal float16 numbers. bfloat16 (float32's
    exponent range) needs no scaling."""
    torch.manual_seed(5)
    batch, groups, tokens, channels = 2, 5, 19, 24
    factor, magnitude, v_scale = (1.0, 0.1, 10.0) if grad_scale > 1 else (300.0, 0.3, 1.0)
    q = magnitude * lopsided((batch, groups, channels), factor, True, dtype)
    k = magnitude * lopsided((batch, tokens, channels), factor, False, dtype)
    v = (v_scale * torch.randn(batch, tokens, channels)).to(dtype)
    grad_out = (grad_scale * torch.randn(batch, groups, channels)).to(dtype)
    q, k, v, grad_out = (t.to(device) for t in (q, k, v, grad_out))
    options = params("soft", sum_assign=True)
    saved = kernels.assign_attention_forward(q, k, v, options)[1:4]
    grads = kernels.assign_attention_backward(grad_out, q, k, v, *saved, options)
    q64, k64, v64, g64 = (t.cpu().double() for t in (q, k, v, grad_out))
    want = reference.assign_attention_forward(q64, k64, v64, options)
    want_grads = reference.assign_attention_backward(g64, q64, k64, v64, *want[1:4], options)
    for name, grad, expected in zip("qk", grads, want_grads, strict=False):  # dq and dk only
        error = (grad.cpu().double() - expected).norm() / expected.norm()
        assert error <= torch.finfo(dtype).eps, f"grad {name}: relative error {error:.2e}"


def test_batches_past_65535_use_grid_axis_0(monkeypatch):
    """CUDA grids take 65535 programs on axes 1 and 2 but 2**31 - 1 on axis 0: every launch puts the
    whole grid (batch-major) on axis 0. The launches are recorded, not run."""
    launches = []
    monkeypatch.setattr(
        type(_column_stats_kernel),
        "run",
        lambda self, *args, grid, warmup, **kwargs: launches.append((self.__name__, grid)),
    )
    batch = 70_000
    q, k, v = (torch.randn(batch, n, 8) for n in (3, 5, 5))
    saved = kernels.assign_attention_forward(q, k, v, params("gumbel", return_maps=True))[1:4]
    kernels.assign_attention_backward(q, q, k, v, *saved, params("gumbel"))
    kernels.gumbel_noise((batch, 3, 5), 0, "cpu")
    assert len(launches) == 8  # forward 2, backward 2 + 3 map products, noise 1
    assert all(grid == (batch,) for _, grid in launches), launches
    with pytest.raises(ValueError, match="batch size: 1048576"):
        batch_grid(2**20, 2**11)
    assert batch_grid(MAX_PROGRAMS) == (MAX_PROGRAMS,)


def test_tile_offsets_are_int64(device):
    """Rows 0..3 with a row stride of 2**30 (an int32 argument): offsets up to 3 * 2**30 + 3 * 5,
    past int32, as one batch element of a map or of k, v may be with N*S or S*C >= 2**31."""
    out = torch.empty((4, 16), dtype=torch.int64, device=device)
    _tile_offsets_kernel[(1,)](out, 2**30, 5, ROWS=4, COLS=16)
    expected = torch.arange(4)[:, None] * 2**30 + torch.arange(16)[None, :] * 5
    assert torch.equal(out.cpu(), expected)


def test_strided_inputs_are_read_in_place(device):
    """Transposed and sliced views (no copies are made) give the contiguous result."""
    torch.manual_seed(4)
    q = torch.randn(2, 20, 9, device=device).transpose(1, 2)  # [2, 9, 20] with channel stride 9
    k = torch.randn(2, 22, 20, device=device)[:, ::2]  # [2, 11, 20] with token stride 40
    v = torch.randn(20, 2, 11, device=device).permute(1, 2, 0)  # [2, 11, 20] with channel stride 22
    grad_out = torch.randn(2, 20, 9, device=device).transpose(1, 2)
    options = params("soft", return_maps=True)
    strided = kernels.assign_attention_forward(q, k, v, options)
    dense = kernels.assign_attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), options)
    for a, b in zip(strided, dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    grads = kernels.assign_attention_backward(grad_out, q, k, v, *strided[1:4], options)
    dense_grads = kernels.assign_attention_backward(
        grad_out.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), *dense[1:4], options
    )
    for a, b in zip(grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_bfloat16_rounding_is_to_nearest_even(device):
    """``rounded_to`` rounds like torch (ties to even); normal numbers only, as the interpreter
    converts subnormals wrongly on its own."""
    values = torch.tensor([1 / 3, -1 / 3, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 16.7499, 3.0e38, -2.5e-38, 0.0], device=device)
    values = torch.cat([values, torch.randn(248, device=device) * 100])
    out = torch.empty(values.shape, dtype=torch.bfloat16, device=device)
    _round_kernel[(1,)](values, out, BLOCK=256)
    assert torch.equal(out.cpu(), values.cpu().to(torch.bfloat16))


def test_bfloat16_rounding_keeps_nan_and_inf(device):
    """NaNs stay NaN (NVIDIA's canonical NaN 0x7FFFFFFF, its negative, quiet and signalling ones:
    integer rounding alone would carry them into -0.0 or +0.0), infinities stay infinite and
    float32's largest values round to infinity like torch."""
    nan_bits = [0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0x7F800001, 0xFFC00000]
    values = torch.tensor([signed_int32(bits) for bits in nan_bits], dtype=torch.int32).view(torch.float32)
    values = torch.cat([values, torch.tensor([float("inf"), float("-inf"), 3.4e38, -3.4e38, 1.0, 0.0, 0.0, 0.0])])
    values = values.to(device)
    out = torch.empty(values.shape, dtype=torch.bfloat16, device=device)
    _round_kernel[(1,)](values, out, BLOCK=16)
    out, values = out.cpu(), values.cpu()
    assert out[:5].isnan().all(), out[:5]
    assert torch.equal(out[5:], values[5:].to(torch.bfloat16))


def test_unavailable_reason():
    assert "meta" in kernels.unavailable_reason(torch.device("meta"))
    assert (kernels.unavailable_reason(torch.device("cpu")) is None) == kernels.INTERPRETED


COMPILE_PROBE = """
import json, sys
sys.path.insert(0, {tests!r})
from test_assign_attention_triton import compile_launches_for_sm90
print(json.dumps(compile_launches_for_sm90()))
"""


def test_every_launch_compiles_for_sm90_with_tensor_core_dots():
    """Compiled (not interpreted) Triton, targeting sm_90 without a GPU: the kernels the launchers
    actually launch (their block sizes, warps and dtypes) must compile, and bfloat16 and float16
    products must use tensor cores (wgmma, or mma for tiles below 64 rows). Also checks that ``unavailable_reason``
    refuses CPU tensors when not interpreted."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_PROBE.format(tests=str(TESTS_DIR))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "TRITON_INTERPRET=1" in report["cpu_reason"]
    compiled = report["kernels"]
    names = {entry["kernel"] for entry in compiled}
    assert names == {
        "_column_stats_kernel",
        "_assign_output_kernel",
        "_backward_row_kernel",
        "_backward_column_kernel",
        "_map_product_kernel",
        "_distill_kl_kernel",
    }
    assert {entry["dot"] for entry in compiled} == {"bf16", "fp16", "fp32", "None"}
    for entry in compiled:
        if entry["dot"] in ("bf16", "fp16"):
            assert entry["tensor_cores"], f"{entry['kernel']} does not use tensor-core dots for {entry['dot']}"


def compile_launches_for_sm90() -> dict:
    """Record the launches of the public launchers on CPU tensors (nothing runs) and compile each for sm_90.

    Runs in a process without TRITON_INTERPRET (see the test above)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction, mangle_type

    launches = []
    JITFunction.run = lambda self, *args, grid, warmup, **kwargs: launches.append((self, args, kwargs))
    variants = [  # (dtype, mode, sum_assign, return_maps, (B, N, S, C)): CIGN's first task with one audio
        (torch.bfloat16, "gumbel", False, False, (2, 9, 1, 512)),  # token (the smallest tiles), a later task
        (torch.bfloat16, "gumbel", False, False, (2, 100, 49, 512)),  # on visual tokens, the float32 path and
        (torch.float32, "soft", True, True, (2, 64, 196, 384)),  # float16 (row-scaled products) with the maps
        (torch.float16, "hard", False, True, (2, 100, 49, 512)),  # of a hard mode (stored by the first slice)
        (torch.bfloat16, "gumbel", False, True, (2, 100, 49, 512)),  # and of gumbel mode (the clean soft map)
    ]
    for dtype, mode, sum_assign, maps, (batch, groups, tokens, channels) in variants:
        q, k, v = (torch.randn(batch, n, channels, dtype=dtype) for n in (groups, tokens, tokens))
        options = params(mode, sum_assign=sum_assign, seed=5, return_maps=maps)
        fwd = kernels.assign_attention_forward(q, k, v, options)
        kernels.assign_attention_backward(q, q, k, v, *fwd[1:4], options)
    kernels.token_distill_kl_forward(*torch.randn(2, 128, 90, dtype=torch.bfloat16), 3, 80, 2.0, "batchmean")
    compiled, seen = [], set()
    for fn, args, kwargs in launches:
        options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
        signature = {name: mangle_type(arg) for name, arg in zip(fn.arg_names, args, strict=False)}
        signature.update({name: "constexpr" for name in kwargs})
        key = (fn.__name__, json.dumps(signature), repr(sorted(kwargs.items())), repr(options))
        if key in seen:
            continue
        seen.add(key)
        constexprs = {(fn.arg_names.index(name),): value for name, value in kwargs.items()}
        binary = triton.compile(
            ASTSource(fn=fn, signature=signature, constexprs=constexprs),
            target=GPUTarget("cuda", 90, 32),
            options=options,
        )
        compiled.append(
            {
                "kernel": fn.__name__,
                "dot": str(kwargs.get("DOT_DTYPE")),
                "tensor_cores": any(op in binary.asm["ptx"] for op in ("wgmma.mma_async", "mma.sync")),
            }
        )
    return {"cpu_reason": kernels.unavailable_reason(torch.device("cpu")), "kernels": compiled}
