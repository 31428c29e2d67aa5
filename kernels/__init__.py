"""The ``triton`` backend (``cign_fast.kernels``): fused Triton kernels behind the backend contract.

Exports ``assign_attention_forward``, ``assign_attention_backward``, ``token_distill_kl_forward``,
``bernoulli_distill_kl_forward`` (contracts in :mod:`cign_fast.ops.reference`; parameters
:class:`cign_fast.contract.AssignParams`), ``gumbel_noise`` and ``unavailable_reason``.
On CPU tensors the kernels run under Triton's interpreter, which must be switched on
(``TRITON_INTERPRET=1``) before this package is imported: Triton reads it when a kernel is defined.
"""

from __future__ import annotations

import torch

from .assign_attention import assign_attention_backward, assign_attention_forward, gumbel_noise
from .bernoulli_distill_kl import bernoulli_distill_kl_forward
from .token_distill_kl import token_distill_kl_forward
from .utils import INTERPRETED

MIN_CAPABILITY = (8, 0)  # bfloat16 tensor-core dots

__all__ = [
    "assign_attention_backward",
    "assign_attention_forward",
    "bernoulli_distill_kl_forward",
    "gumbel_noise",
    "token_distill_kl_forward",
    "unavailable_reason",
]


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` in this process, or ``None`` if they can."""
    if device.type not in ("cpu", "cuda"):
        return f"runs on CUDA tensors (CPU tensors under TRITON_INTERPRET=1), got {device.type}"
    if INTERPRETED:
        return None
    if device.type == "cpu":
        return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing cign_fast.kernels"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return f"needs a CUDA device of compute capability >= 8.0, got {capability[0]}.{capability[1]}"
    return None
