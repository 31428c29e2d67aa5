"""The ``cpp`` backend: the C++ CPU extension ``cign_fast._C`` behind the backend contract.

Inputs may have any strides: the kernels read batch and row strides directly and copy a tensor only
when its last (channel) dimension is strided. float32 and bfloat16, float32 arithmetic; threads are
ATen's (``torch.get_num_threads()``). See :mod:`cign_fast.ops.reference` for the contracts.
"""

from __future__ import annotations

from functools import partial

import torch

from cign_fast import _C
from cign_fast.contract import seed_keys
from cign_fast.ops import native


def kernel_isa() -> str:
    """Instruction set of the CPU kernels in use: ``"avx2"`` or ``"generic"``."""
    return _C.kernel_isa()


def gumbel_noise(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Float32 Gumbel noise [B, N, S] computed in C++ (same values as ``ops.gumbel.gumbel_noise``)."""
    return _C.gumbel_noise(*shape, *seed_keys(int(seed)))


assign_attention_forward = partial(native.assign_attention_forward, _C)
assign_attention_backward = partial(native.assign_attention_backward, _C)
# The custom op's path: the forward saves the softmax y, the backward takes it (no recomputed q k^T).
assign_attention_forward_saving = partial(native.assign_attention_forward, _C, save_probs=True)
assign_attention_backward_saved = assign_attention_backward  # (..., row_sum, params, probs)
bernoulli_distill_kl_forward = partial(native.bernoulli_distill_kl_forward, _C)
token_distill_kl_forward = _C.token_distill_kl_forward  # (loss, grad_student [R, K]): the contract as is
