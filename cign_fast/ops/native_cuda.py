"""The ``cuda`` backend: the CUDA extension ``cign_fast._cuda`` behind the backend contract.

Kernels run on torch's current stream of the inputs' device. The matrix products are cuBLAS calls
(``at::bmm``) in float32 (float16/bfloat16 inputs are widened once); the softmax over groups, the
normalisation over tokens, the Gumbel noise and the backward's elementwise chain are fused kernels.
See :mod:`cign_fast.ops.reference` for the contracts.
"""

from __future__ import annotations

from functools import partial

import torch

from cign_fast import _cuda
from cign_fast.contract import seed_keys
from cign_fast.ops import native


def unavailable_reason(device: torch.device) -> str | None:
    """Why the CUDA kernels cannot run on ``device`` now, or ``None``."""
    return None if torch.cuda.is_available() else "no CUDA device is visible to torch"


def compiled_archs() -> list[str]:
    """Compute capabilities the extension holds code for, e.g. ``["8.0", "9.0"]`` (nvcc's ``__CUDA_ARCH_LIST__``)."""
    return [f"{int(arch) // 100}.{int(arch) % 100 // 10}" for arch in _cuda.compiled_archs().split(",") if arch]


def gumbel_noise(shape: tuple[int, int, int], seed: int, device: torch.device) -> torch.Tensor:
    """Float32 Gumbel noise [B, N, S] computed by a CUDA kernel on ``device``."""
    return _cuda.gumbel_noise(*shape, *seed_keys(int(seed)), torch.device(device).index or 0)


assign_attention_forward = partial(native.assign_attention_forward, _cuda)
assign_attention_backward = partial(native.assign_attention_backward, _cuda)
bernoulli_distill_kl_forward = partial(native.bernoulli_distill_kl_forward, _cuda)
token_distill_kl_forward = _cuda.token_distill_kl_forward  # (loss, grad_student [R, K]): the contract as is
