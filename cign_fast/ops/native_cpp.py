"""The ``cpp`` backend: the C++ CPU extension ``cign_fast._C`` behind the backend contract.

Inputs may have any strides: the kernels read batch and row strides directly and copy a tensor only
when its last (channel) dimension is strided. float32 and bfloat16, float32 arithmetic; threads are
ATen's (``torch.get_num_threads()``). See :mod:`cign_fast.ops.reference` for the contracts.
"""

from __future__ import annotations

import torch

from cign_fast import _C
from cign_fast.ops.gumbel import seed_keys


def kernel_isa() -> str:
    """Instruction set of the CPU kernels in use: ``"avx2"`` or ``"generic"``."""
    return _C.kernel_isa()


def gumbel_noise(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Float32 Gumbel noise [B, N, S] computed in C++ (same values as ``ops.gumbel.gumbel_noise``)."""
    return _C.gumbel_noise(*shape, *seed_keys(int(seed)))


def assign_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: int, tau: float, eps: float,
    sum_assign: bool, seed: int, return_maps: bool,
) -> tuple[torch.Tensor, ...]:
    """``(out [B,N,C], col_lse [B,S], col_argmax [B,S], row_sum [B,N], hard_map, soft_map)``."""
    return _C.assign_attention_forward(q, k, v, mode, tau, eps, sum_assign, *seed_keys(int(seed)), return_maps)


def assign_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    col_lse: torch.Tensor, col_argmax: torch.Tensor, row_sum: torch.Tensor,
    mode: int, tau: float, eps: float, sum_assign: bool, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_q, grad_k, grad_v)``, recomputing the map from ``q, k`` and the column statistics."""
    return _C.assign_attention_backward(
        grad_out, q, k, v, col_lse, col_argmax, row_sum, mode, tau, eps, sum_assign, *seed_keys(int(seed))
    )


def token_distill_kl_forward(
    student: torch.Tensor, teacher: torch.Tensor, start: int, stop: int, temperature: float, reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad_student [R, K])`` in one pass over the rows (any strides)."""
    return _C.token_distill_kl_forward(student, teacher, start, stop, temperature, reduction)
