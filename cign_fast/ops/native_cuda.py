"""The ``cuda`` backend: the CUDA extension ``cign_fast._cuda`` behind the backend contract.

Kernels run on torch's current stream of the inputs' device. The matrix products are cuBLAS calls
(``at::bmm``) in float32 (float16/bfloat16 inputs are widened once); the softmax over groups, the
normalisation over tokens, the Gumbel noise and the backward's elementwise chain are fused kernels.
See :mod:`cign_fast.ops.reference` for the contracts.
"""

from __future__ import annotations

import torch

from cign_fast import _cuda
from cign_fast.ops.gumbel import seed_keys


def unavailable_reason(device: torch.device) -> str | None:
    """Why the CUDA kernels cannot run on ``device`` now, or ``None``."""
    return None if torch.cuda.is_available() else "no CUDA device is visible to torch"


def gumbel_noise(shape: tuple[int, int, int], seed: int, device: torch.device) -> torch.Tensor:
    """Float32 Gumbel noise [B, N, S] computed by a CUDA kernel on ``device``."""
    return _cuda.gumbel_noise(*shape, *seed_keys(int(seed)), torch.device(device).index or 0)


def assign_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: int, tau: float, eps: float,
    sum_assign: bool, seed: int, return_maps: bool,
) -> tuple[torch.Tensor, ...]:
    """``(out [B,N,C], col_lse [B,S], col_argmax [B,S], row_sum [B,N], hard_map, soft_map)``."""
    return _cuda.assign_attention_forward(q, k, v, mode, tau, eps, sum_assign, *seed_keys(int(seed)), return_maps)


def assign_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    col_lse: torch.Tensor, col_argmax: torch.Tensor, row_sum: torch.Tensor,
    mode: int, tau: float, eps: float, sum_assign: bool, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_q, grad_k, grad_v)``, recomputing the map from ``q, k`` and the column statistics."""
    return _cuda.assign_attention_backward(
        grad_out, q, k, v, col_lse, col_argmax, row_sum, mode, tau, eps, sum_assign, *seed_keys(int(seed))
    )


def token_distill_kl_forward(
    student: torch.Tensor, teacher: torch.Tensor, start: int, stop: int, temperature: float, reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad_student [R, K])``, one warp per row (any strides)."""
    return _cuda.token_distill_kl_forward(student, teacher, start, stop, temperature, reduction)
