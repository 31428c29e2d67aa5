"""The fused ops, their reference twins and the backend dispatcher."""

from cign_fast.ops.assign_attention import assign_attention
from cign_fast.ops.bernoulli_distill_kl import bernoulli_distill_kl
from cign_fast.ops.token_distill_kl import token_distill_kl

__all__ = ["assign_attention", "bernoulli_distill_kl", "token_distill_kl"]
