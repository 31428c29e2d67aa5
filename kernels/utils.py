"""Helpers shared by the Triton launchers: block sizes, dot operand types, the device guard.

Every launcher passes the strides of its inputs to the kernels (no ``.contiguous()`` copies);
the outputs and scratch buffers they allocate are contiguous.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Triton reads TRITON_INTERPRET when a kernel is defined, i.e. when this package is imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# tl.dot needs every block dimension >= 16.
MIN_DOT_BLOCK = 16


@triton.jit
def rounded_to(x, dtype: tl.constexpr):
    """Float32 ``x`` converted to ``dtype`` (a store's element type), rounding to nearest even.

    Compiled Triton already rounds float32 -> bfloat16 to nearest even; Triton's interpreter
    truncates, so for bfloat16 the rounding is done here with integer ops (exact on both; inputs
    are finite) and the conversion that follows is exact."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


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
