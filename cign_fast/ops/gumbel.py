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
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x846CA68B
SEED_SALT_A = 0x243F6A88
SEED_SALT_B = 0x85A308D3
MAX_NOISE_ELEMENTS = 1 << 32


def mix32_int(x: int) -> int:
    """``mix32`` on a Python int (host side, for the keys)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_MUL_1) & MASK32
    x ^= x >> 15
    x = (x * MIX_MUL_2) & MASK32
    x ^= x >> 16
    return x


def seed_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys derived from a non-negative 63-bit ``seed``."""
    if not 0 <= seed < (1 << 63):
        raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed}")
    key_a = mix32_int((seed & MASK32) ^ SEED_SALT_A)
    key_b = mix32_int(((seed >> 32) & MASK32) ^ key_a ^ SEED_SALT_B)
    return key_a, key_b


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
    return (x >> 9).to(torch.float32) * 2.0**-23 + 2.0**-24


def gumbel_noise(shape: tuple[int, int, int], seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gumbel(0, 1) noise of ``shape = (B, N, S)`` in float32, element ``e`` as the module states."""
    numel = shape[0] * shape[1] * shape[2]
    if numel >= MAX_NOISE_ELEMENTS:
        raise ValueError(f"gumbel noise: the map has {numel} elements; at most 2**32 - 1 are supported")
    index = torch.arange(numel, device=device, dtype=torch.int64).view(shape)
    u = uniform_from_index(index, seed)
    return -torch.log(-torch.log(u))
