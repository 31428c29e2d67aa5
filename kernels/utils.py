"""Helpers shared by the Triton launchers: block sizes, dot operand types, grids, the device guard.

Every launcher passes the strides of its inputs to the kernels (no ``.contiguous()`` copies);
the outputs and scratch buffers they allocate are contiguous.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from cign_fast.contract import TRITON_INTERPRETED as INTERPRETED

UNDER_INTERPRETER = tl.constexpr(INTERPRETED)  # see ``rounded_to`` and ``exact_logits``

# tl.dot needs every block dimension >= 16.
MIN_DOT_BLOCK = 16

# CUDA allows 2**31 - 1 programs on grid axis 0 (65535 on axes 1 and 2): every grid is one axis.
MAX_PROGRAMS = 2**31 - 1


@triton.jit
def rounded_to(x, dtype: tl.constexpr):
    """Float32 ``x`` converted to ``dtype`` (a store's element type), rounding to nearest even.

    Compiled Triton already rounds float32 -> bfloat16 to nearest even (``cvt.rn``), so this is a
    plain conversion there. Triton's interpreter truncates: under it the rounding to bfloat16 is
    done here with integer ops on the bits (exact for finite values and infinities); a NaN, which
    the integer rounding would carry into a zero, gets its quiet bit set instead (a NaN in bfloat16,
    like the hardware conversion gives)."""
    if UNDER_INTERPRETER:
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = tl.where(x != x, bits | 0x00400000, (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000)
            x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def exact_logits(product, scale, noise, tau, NOISY: tl.constexpr):
    """``(scale * product + noise) / tau`` (float32, ``noise`` ignored unless ``NOISY``) rounded after every
    step as the reference rounds it: no multiply-add contracted into an fma, a correctly rounded division
    (Triton's ``/`` is ``div.full.f32``, within 2 ulp). Equal products then give equal logits, and so
    equal hard choices, in every backend. Under the interpreter numpy already rounds each operation."""
    if UNDER_INTERPRETER:
        logits = scale * product
        if NOISY:
            logits = logits + noise
    else:
        logits = libdevice.mul_rn(product, scale)
        if NOISY:
            logits = libdevice.add_rn(logits, noise)
    return tl.math.div_rn(logits, tau)


@triton.jit
def tile_offsets(rows, row_stride, cols, col_stride):
    """Int64 element offsets ``rows[:, None] * row_stride + cols[None, :] * col_stride`` of a 2-D tile,
    so that one operand may span 2**31 elements or more."""
    return rows.to(tl.int64)[:, None] * row_stride + cols.to(tl.int64)[None, :] * col_stride


@triton.jit
def batch_program(tiles_per_batch):
    """``(batch element as int64, tile index within it)`` of this program in a ``batch_grid`` grid."""
    program = tl.program_id(0)
    return (program // tiles_per_batch).to(tl.int64), program % tiles_per_batch


def batch_grid(batch: int, *tiles: int) -> tuple[int]:
    """A one-axis grid of ``batch * prod(tiles)`` programs, batch-major, decoded by ``batch_program``.

    Axis 0 takes up to 2**31 - 1 programs where axes 1 and 2 take 65535, and batch-major order
    keeps the programs of one batch element adjacent (they share its k and v in L2)."""
    programs = batch * math.prod(tiles)
    if programs > MAX_PROGRAMS:
        raise ValueError(
            f"batch size: {batch} batch elements of {math.prod(tiles)} tiles each need {programs} "
            f"programs, more than the {MAX_PROGRAMS} a CUDA grid holds; split the batch"
        )
    return (programs,)


def block_size(extent: int, maximum: int, minimum: int = MIN_DOT_BLOCK) -> int:
    """The power of two covering ``extent``, clamped to ``[minimum, maximum]`` (both powers of two)."""
    return max(minimum, min(maximum, triton.next_power_of_2(max(extent, 1))))


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The operand type of ``tl.dot`` for inputs of ``dtype`` (accumulation is always float32).

    Compiled kernels multiply in the input type (tensor cores for float16/bfloat16). Triton's
    interpreter has no bfloat16 arithmetic (its ``tl.dot`` multiplies the raw bit patterns), so
    there bfloat16 operands, already rounded to bfloat16, are widened to float32: the same products."""
    types = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
    if dtype not in types:
        raise TypeError(f"dtype: expected float16, bfloat16 or float32, got {dtype}")
    return tl.float32 if INTERPRETED and dtype == torch.bfloat16 else types[dtype]


def signed_int32(value: int) -> int:
    """A uint32 value as the signed int32 with the same bits, so Triton always types it ``i32``."""
    if not 0 <= value < 1 << 32:
        raise ValueError(f"value: expected a uint32 in [0, 2**32), got {value}")
    return value - (1 << 32) if value >= 1 << 31 else value


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s CUDA device current while launching (Triton launches on the current device)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
