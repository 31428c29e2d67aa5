"""What the ops (``cign_fast.ops``) and the Triton kernels (``cign_fast.kernels``) share.

The assignment op's parameter type, its mode ids, the constants of the counter-based Gumbel noise
and the derivation of the noise keys from a seed, and whether Triton runs interpreted. This module
imports nothing of the package, so both sides import it without importing each other; the C++ and
CUDA sources repeat the constants (``csrc/include/``) and ``tests/test_contract.py`` holds every
copy to the values here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MODES = ("soft", "hard", "gumbel")
MODE_SOFT, MODE_HARD, MODE_GUMBEL = 0, 1, 2

# Gumbel noise (the definition is in cign_fast.ops.gumbel): the "lowbias32" multipliers, the salts
# that derive the two keys from a seed, and the uniform u = (bits >> 9) * UNIFORM_STEP + UNIFORM_OFFSET.
MASK32 = 0xFFFFFFFF
MIX_MUL_1 = 0x7FEB352D
MIX_MUL_2 = 0x846CA68B
SEED_SALT_A = 0x243F6A88
SEED_SALT_B = 0x85A308D3
UNIFORM_STEP = 2.0**-23
UNIFORM_OFFSET = 2.0**-24
MAX_NOISE_ELEMENTS = 1 << 32  # noise indices are uint32

# Triton reads TRITON_INTERPRET when a kernel is defined (when cign_fast.kernels is imported); it is
# read here once, so the dispatcher and the kernels never disagree about it.
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class AssignParams:
    """The non-tensor arguments of the assignment op, as every backend receives them.

    ``mode`` is a mode id (``MODE_SOFT``, ``MODE_HARD``, ``MODE_GUMBEL``). The Gumbel noise of element
    ``[b, i, s]`` of the local [B, N, S] map is that of element ``[g, i, s]`` of the global batch, with
    ``g = noise_batch_offset + b * noise_batch_stride``: under data parallelism each rank passes where
    its clips sit in the global batch, so the ranks draw the noise one process would. The public
    function validates the values; backends trust them.
    """

    mode: int = MODE_SOFT
    tau: float = 1.0
    eps: float = 1.0
    sum_assign: bool = False
    seed: int = 0
    return_maps: bool = False
    noise_batch_offset: int = 0
    noise_batch_stride: int = 1

    @property
    def noisy(self) -> bool:
        return self.mode == MODE_GUMBEL

    def noise_keys(self) -> tuple[int, int]:
        """The two uint32 noise keys of ``seed`` (zeros when the mode has no noise)."""
        return seed_keys(self.seed) if self.noisy else (0, 0)

    def global_batch_size(self, batch: int) -> int:
        """Clips of the global batch the noise indices of a local batch of ``batch`` clips reach."""
        return self.noise_batch_offset + (batch - 1) * self.noise_batch_stride + 1


def mix32_int(x: int) -> int:
    """The ``lowbias32`` finaliser on a Python int (host side, for the keys)."""
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


def reduce_rows(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` (``batchmean``/``mean``, ``sum``, ``none``) to per-row losses [R]."""
    if reduction in ("batchmean", "mean"):
        return per_row.sum() / max(per_row.shape[0], 1)
    if reduction == "sum":
        return per_row.sum()
    return per_row


def bernoulli_divisor(reduction: str, rows: int, columns: int) -> int:
    """What ``bernoulli_distill_kl`` divides the summed loss by: R for ``'batchmean'``, R * columns for
    ``'mean'`` (the mean over elements), 1 for ``'sum'`` and ``'none'``."""
    return {"batchmean": rows, "mean": rows * columns}.get(reduction, 1)


def reduce_bernoulli_rows(per_row: torch.Tensor, reduction: str, columns: int) -> torch.Tensor:
    """Apply ``reduction`` to the per-row losses [R] of ``columns`` distilled columns each; the sum is
    taken in float64 (deterministic, and no precision lost over many rows)."""
    if reduction == "none":
        return per_row
    total = per_row.sum(dtype=torch.float64) / bernoulli_divisor(reduction, per_row.shape[0], columns)
    return total.to(per_row.dtype)
