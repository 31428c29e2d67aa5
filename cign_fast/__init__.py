"""cign_fast: CIGN (ICCV 2023) continual audio-visual learning with fused kernels."""

from cign_fast.ops import assign_attention, bernoulli_distill_kl, token_distill_kl
from cign_fast.ops.reference import (
    assign_attention_reference, bernoulli_distill_kl_reference, token_distill_kl_reference,
)

__version__ = "0.1.0"
__all__ = [
    "assign_attention", "assign_attention_reference", "bernoulli_distill_kl", "bernoulli_distill_kl_reference",
    "token_distill_kl", "token_distill_kl_reference", "__version__",
]
