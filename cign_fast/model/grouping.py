"""The grouping block (GroupViT style) that turns N group tokens and S modality tokens into N group embeddings.

Layers whose size depends on N (the token-mixing MLP over the group axis) grow with
:func:`keep_old_weights`, which keeps the old parameters in place.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import cign_fast
from cign_fast.model.transformer import Mlp, TransformerBlock, init_weights


def keep_old_weights(grown: nn.Linear, old: nn.Linear) -> None:
    """Copy ``old`` into the leading block of the larger, freshly initialised ``grown`` (in place).

    Kept: ``grown.weight[:old_out, :old_in] = old.weight`` and ``grown.bias[:old_out] = old.bias``;
    the new rows and columns keep their fresh initialisation.
    """
    old_out, old_in = old.weight.shape
    new_out, new_in = grown.weight.shape
    if old_out > new_out or old_in > new_in:
        raise ValueError(f"grown: a layer can only grow, got {(new_in, new_out)} from {(old_in, old_out)} (in, out)")
    with torch.no_grad():
        grown.weight[:old_out, :old_in] = old.weight
        grown.bias[:old_out] = old.bias


class AssignAttention(nn.Module):
    """One-head assignment of modality tokens to groups, then the output projection.

    ``group_tokens`` [B, N, D], ``tokens`` [B, S, D] -> [B, N, D]; softmax over the group axis,
    via :func:`cign_fast.assign_attention` (``mode`` "soft", "hard" or "gumbel"). ``noise_batch``
    (offset, stride) places the local batch in the global one for the Gumbel noise (see ``CIGN.set_noise_batch``).
    """

    def __init__(self, dim: int, backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.noise_batch = (0, 1)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, group_tokens: Tensor, tokens: Tensor, mode: str) -> Tensor:
        assigned = cign_fast.assign_attention(
            self.q_proj(group_tokens),
            self.k_proj(tokens),
            self.v_proj(tokens),
            mode=mode,
            backend=self.backend,
            noise_batch_offset=self.noise_batch[0],
            noise_batch_stride=self.noise_batch[1],
        )
        return self.out_proj(assigned)


class GroupingBlock(nn.Module):
    """LayerNorms; token-mixing MLP over the group axis (N -> N); cross-attention of the groups onto the
    modality tokens; AssignAttention; residual; channel MLP (the reduction is the identity: width stays D).

    ``tokens`` [B, S, D], ``group_tokens`` [B, N, D] -> [B, N, D]. Build with ``num_groups=0`` and call
    :meth:`set_num_groups` before the first forward.

    ``norms="pre_and_post"`` (the default) gives the cross-attention its own LayerNorms on the groups and
    the tokens before attending, then normalises its output; ``"authors"`` is the authors' (GroupViT's)
    post-norm block, without the two pre-norms (its inputs are already normalised).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, backend: str, norms: str = "pre_and_post") -> None:
        super().__init__()
        self.num_groups = 0
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_groups = nn.LayerNorm(dim)
        self.mixer_hidden = max(1, dim // 2)
        self.token_mixer: Mlp | None = None
        self.norm_mixed = nn.LayerNorm(dim)
        self.cross_attn = TransformerBlock(
            dim, num_heads, mlp_ratio, drop_path=0.0, cross=True, attention_norms=norms == "pre_and_post"
        )
        self.norm_cross = nn.LayerNorm(dim)
        self.assign = AssignAttention(dim, backend)
        self.norm_assigned = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, int(dim * mlp_ratio), dim)
        self.apply(init_weights)

    def set_num_groups(self, num_groups: int) -> None:
        """Grow the token-mixing MLP ``Mlp(N, D/2, N)`` to ``num_groups`` groups, old weights kept in place:
        ``fc1`` keeps ``weight[:, :N_old]`` and its whole bias; ``fc2`` keeps ``weight[:N_old, :]`` and
        ``bias[:N_old]``.
        """
        like = self.norm_tokens.weight
        mixer = Mlp(num_groups, self.mixer_hidden, num_groups).to(device=like.device, dtype=like.dtype)
        mixer.apply(init_weights)
        if self.token_mixer is not None:
            keep_old_weights(mixer.fc1, self.token_mixer.fc1)
            keep_old_weights(mixer.fc2, self.token_mixer.fc2)
        self.token_mixer = mixer
        self.num_groups = num_groups

    def mix_groups(self, group_tokens: Tensor) -> Tensor:
        """The token-mixing MLP applied along the group axis: [B, N, D] -> [B, N, D]."""
        if self.token_mixer is None:
            raise RuntimeError("GroupingBlock: call set_num_groups before the first forward")
        return self.norm_mixed(self.token_mixer(group_tokens.transpose(1, 2)).transpose(1, 2))

    def forward(self, tokens: Tensor, group_tokens: Tensor, assign_mode: str) -> Tensor:
        tokens = self.norm_tokens(tokens)
        groups = self.mix_groups(self.norm_groups(group_tokens))
        groups = self.norm_cross(self.cross_attn(groups, tokens))
        grouped = self.assign(groups, tokens, assign_mode) + groups
        return grouped + self.channel_mlp(self.norm_assigned(grouped))


def set_noise_batch(model: nn.Module, offset: int, stride: int) -> None:
    """Every :class:`AssignAttention` in ``model``: local clip b draws the Gumbel noise of clip
    ``offset + b * stride`` of the global batch (a ``DistributedSampler`` rank: ``rank, world_size``), so
    data-parallel ranks draw what one process would. A model without assignment is left as it is."""
    for module in model.modules():
        if isinstance(module, AssignAttention):
            module.noise_batch = (offset, stride)
