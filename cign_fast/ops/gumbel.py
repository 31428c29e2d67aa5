"""The counter-based Gumbel noise every backend reproduces bit for bit (up to ``log``'s last ulp).

The noise for element ``e`` (the linear index of ``[b, i, s]`` in a contiguous ``[B, N, S]`` map,
``e = (b * N + i) * S + s``) under integer ``seed`` is::

    key_a = mix32(seed_lo ^ 0x243F6A88)
    key_b = mix32(seed_hi ^ key_a ^ 0x85A308D3)
    x     = mix32(mix32(e ^ key_a) ^ key_b)            # uint32, wrap-around arithmetic
    u     = (x >> 9) * 2**-23 + 2**-24                 # float32, in [2**-24, 1 - 2**-24]
    g     = -log(-log(u))

``mix32`` is the "lowbias32" integer finaliser (xorshift-multiply, two rounds). ``u`` is built so
that it is never 0 or 1 (the fp16 NaN of ``torch.nn.functional.gumbel_softmax`` came from
``u = 0``), and it is computed in float32 whatever the input dtype. The keys are computed once on
the host; kernels receive ``key_a`` and ``key_b`` and need only ``mix32`` and ``log``.

``b`` is the clip's position in the *global* batch: a local batch whose clip ``b`` sits at
``batch_offset + b * batch_stride`` of the global batch (a data-parallel rank) draws exactly the
noise of those clips in a one-process run. The constants live in :mod:`cign_fast.contract`.
"""

from __future__ import annotations

import torch

from cign_fast.contract import (
    MASK32,
    MAX_NOISE_ELEMENTS,
    MIX_MUL_1,
    MIX_MUL_2,
    UNIFORM_OFFSET,
    UNIFORM_STEP,
    mix32_int,
    seed_keys,
)

__all__ = ["gumbel_noise", "mix32", "mix32_int", "noise_index", "seed_keys", "uniform_from_index"]


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant mod 2**32`` on int64 tensors holding uint32 values, without overflow."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """``mix32`` on an int64 tensor of uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_MUL_1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_MUL_2)
    return x ^ (x >> 16)


def uniform_from_index(index: torch.Tensor, seed: int) -> torch.Tensor:
    """Float32 uniforms in [2**-24, 1 - 2**-24] for int64 element indices ``index``."""
    key_a, key_b = seed_keys(seed)
    x = mix32(mix32(index ^ key_a) ^ key_b)
    return (x >> 9).to(torch.float32) * UNIFORM_STEP + UNIFORM_OFFSET


def noise_index(
    shape: tuple[int, int, int], device: torch.device | str = "cpu", batch_offset: int = 0, batch_stride: int = 1
) -> torch.Tensor:
    """Int64 noise indices [B, N, S] of a local map whose clip ``b`` is clip ``batch_offset + b * batch_stride``
    of the global batch: ``((batch_offset + b * batch_stride) * N + i) * S + s``."""
    batch, groups, tokens = shape
    global_batch = batch_offset + (batch - 1) * batch_stride + 1
    if global_batch * groups * tokens >= MAX_NOISE_ELEMENTS:
        raise ValueError(
            f"gumbel noise: the global map has {global_batch * groups * tokens} elements; "
            "at most 2**32 - 1 are supported"
        )
    clips = batch_offset + batch_stride * torch.arange(batch, device=device, dtype=torch.int64)
    within = torch.arange(groups * tokens, device=device, dtype=torch.int64).view(groups, tokens)
    return clips.view(batch, 1, 1) * (groups * tokens) + within


def gumbel_noise(
    shape: tuple[int, int, int],
    seed: int,
    device: torch.device | str = "cpu",
    batch_offset: int = 0,
    batch_stride: int = 1,
) -> torch.Tensor:
    """Gumbel(0, 1) noise of ``shape = (B, N, S)`` in float32, element ``e`` as the module states
    (local clip ``b`` is global clip ``batch_offset + b * batch_stride``)."""
    u = uniform_from_index(noise_index(shape, device, batch_offset, batch_stride), seed)
    return -torch.log(-torch.log(u))
