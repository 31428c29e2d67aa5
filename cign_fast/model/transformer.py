"""Transformer building blocks: MLP, multi-head (cross-)attention, pre-norm blocks and the weight init.

Shapes: tokens are [B, L, D] throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import StochasticDepth


def init_weights(module: nn.Module) -> None:
    """GroupViT's init: Linear weights trunc-normal (std .02) with zero bias; LayerNorm ones and zeros."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` on the last axis: [..., in_features] -> [..., out_features]."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention of ``query`` [B, Lq, D] onto ``context`` [B, Lk, D] -> [B, Lq, D]."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """[B, L, D] -> [B, heads, L, D / heads]."""
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        attended = F.scaled_dot_product_attention(
            self.split_heads(self.q_proj(query)),
            self.split_heads(self.k_proj(context)),
            self.split_heads(self.v_proj(context)),
        )
        return self.out_proj(attended.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """Pre-norm block with drop-path: ``x + attn(norm(x), norm(context))``, then ``x + mlp(norm(x))``.

    With ``context=None`` it is self-attention over ``x`` [B, L, D]; otherwise ``x`` [B, Lq, D]
    attends to ``context`` [B, Lk, D] (normalised by its own LayerNorm). ``attention_norms=False`` drops
    the two LayerNorms before the attention (GroupViT's post-norm cross-attention block, whose inputs
    arrive normalised and whose output the caller normalises).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        cross: bool = False,
        attention_norms: bool = True,
    ) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(dim) if attention_norms else nn.Identity()
        self.norm_context = (nn.LayerNorm(dim) if attention_norms else nn.Identity()) if cross else None
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        query = self.norm_query(x)
        keys = query if self.norm_context is None else self.norm_context(context)
        x = x + self.drop_path(self.attn(query, keys))
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))


class Transformer(nn.Module):
    """``depth`` self-attention blocks, drop-path rising linearly from 0 to ``drop_path``: [B, L, D] -> [B, L, D]."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        rates = torch.linspace(0.0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio, rate) for rate in rates)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x
