"""L2P: Learning to Prompt for Continual Learning (Wang, Zhang, Lee, Zhang, Sun, Ren, Su, Perot, Dy, Pfister,
CVPR 2022), in features mode, on the backbone.

* Frozen part: L2P keeps a pre-trained ViT frozen and learns only prompts, their keys and the classifier.
  Here the pre-trained encoder is the one that made the features (AudioMAE / VideoMAE in AV-CIL's release,
  or ``cign-fast extract``'s), so L2P runs only in features mode (``data.input_mode: features``); the
  backbone's input projection, transformer and LayerNorm stay frozen at their initialisation, as the
  ViT does in the paper, and only the prompt pools, keys and the two heads train.
* Prompt pool per modality: M = ``l2p.pool_size`` (10) prompts of L_p = ``l2p.prompt_length`` (5) tokens,
  each with a key; the query of a clip is the mean of its (frozen) input feature tokens, and the N =
  ``l2p.top_k`` (5) prompts whose keys have the largest cosine similarity to the query are prepended to the
  projected tokens before the transformer. The classifier reads the mean of the outputs at the prompt
  positions (the paper's). M, N, L_p are the paper's defaults.
* Loss per head: softmax cross-entropy plus the surrogate ``l2p.pull_weight * sum_selected (1 - cos(q, k))``
  (batch mean) that pulls the selected keys to their queries; 0.5 by default. Without a memory (L2P's
  rehearsal-free setting) the old classes' logits are masked out of the cross-entropy, as the authors'
  code does; with exemplars nothing is masked.
* Audio-visual: the two modalities have their own pools and heads; predictions are fine-tuning's (late
  fusion of the two softmaxes, :mod:`cign_fast.methods.backbone`). Departure: no prompt-frequency
  diversification (the paper's optional batch-wise balancing of the selection).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.backbone import (
    BackboneBranch,
    BackboneBranches,
    classification_loss,
    feature_embedding,
    softmax_predict,
)
from cign_fast.methods.base import ContinualMethod
from cign_fast.methods.registry import register_method
from cign_fast.model import ModelConfig
from cign_fast.model.cign import check_model_inputs


class L2POutput(NamedTuple):
    """:class:`cign_fast.methods.backbone.BackboneOutput`'s fields, then the key distances."""

    audio_logits: Tensor
    visual_logits: Tensor
    audio_features: Tensor  # [B, D] mean of the outputs at the prompt positions
    visual_features: Tensor
    audio_tokens: Tensor  # [B, N * L_p + S_a, D] transformer outputs, prompts first
    visual_tokens: Tensor
    audio_key_distance: Tensor  # [B] sum over the selected prompts of 1 - cos(query, key)
    visual_key_distance: Tensor


class PromptPool(nn.Module):
    """M prompts [L_p, D] with keys [D_q]; ``forward(query [B, D_q])`` picks the ``top_k`` nearest keys by cosine."""

    def __init__(self, pool_size: int, prompt_length: int, top_k: int, query_dim: int, dim: int) -> None:
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"l2p.top_k: expected 1 <= top_k <= l2p.pool_size = {pool_size}, got {top_k}")
        self.top_k = top_k
        self.prompts = nn.Parameter(torch.empty(pool_size, prompt_length, dim).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(pool_size, query_dim).uniform_(-1, 1))

    def select(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """``(indices [B, N] of the selected prompts, their cosine similarities [B, N])``."""
        cosines = F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).t()  # [B, M]
        chosen = cosines.topk(self.top_k, dim=-1).indices
        return chosen, cosines.gather(1, chosen)

    def forward(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """``(prompt tokens [B, N * L_p, D], key distances [B])``."""
        chosen, cosines = self.select(query)
        prompts = self.prompts[chosen]  # [B, N, L_p, D]
        return prompts.flatten(1, 2), (1 - cosines).sum(dim=-1)


def prompted_branch(branch: BackboneBranch, pool: PromptPool, inputs: Tensor) -> tuple[Tensor, ...]:
    """One modality: ``(logits, features, tokens, key distances)`` with the selected prompts prepended."""
    prompts, distance = pool(inputs.mean(dim=1))  # query: the frozen features themselves
    tokens = branch.encoder(inputs)
    out = branch.norm(branch.transformer(torch.cat([prompts.to(tokens.dtype), tokens], dim=1)))
    features = out[:, : prompts.shape[1]].mean(dim=1)
    return branch.head(features), features, out, distance


class PromptedBackbone(BackboneBranches):
    """The backbone with a prompt pool per modality, everything but the pools and heads frozen."""

    def __init__(self, cfg: ModelConfig, pool_size: int, prompt_length: int, top_k: int) -> None:
        super().__init__(cfg)
        self.requires_grad_(False)
        audio_dim, visual_dim = cfg.feature_dims()
        self.audio_pool = PromptPool(pool_size, prompt_length, top_k, audio_dim, cfg.dim)
        self.visual_pool = PromptPool(pool_size, prompt_length, top_k, visual_dim, cfg.dim)

    def forward(self, audio: Tensor, visual: Tensor) -> L2POutput:
        if not self._task_sizes:
            raise RuntimeError("PromptedBackbone.forward: call add_task(num_new_classes) before the first forward")
        check_model_inputs(self.cfg, audio, visual)  # the backbone's checks and messages
        a_logits, a_features, a_tokens, a_distance = prompted_branch(self.audio_branch, self.audio_pool, audio)
        v_logits, v_features, v_tokens, v_distance = prompted_branch(self.visual_branch, self.visual_pool, visual)
        return L2POutput(a_logits, v_logits, a_features, v_features, a_tokens, v_tokens, a_distance, v_distance)


@register_method
class L2P(ContinualMethod[L2POutput]):
    """Frozen backbone, key-query prompt selection, prompts and heads trained (module docstring)."""

    name = "l2p"
    loss_terms = ("ce_audio", "ce_visual", "pull")
    memory_use = "optional"
    input_modes = ("features",)
    config_sections = ("l2p",)

    def build_model(self) -> PromptedBackbone:
        settings = self.config.l2p
        return PromptedBackbone(self.model_config, settings.pool_size, settings.prompt_length, settings.top_k)

    def loss(
        self, model: nn.Module, out: L2POutput, labels: Tensor, teacher_out: L2POutput | None
    ) -> dict[str, Tensor]:
        memory = self.config.memory
        num_old = 0 if memory.budget or memory.per_class else self.current_task.num_old_classes
        masked = out._replace(audio_logits=out.audio_logits[:, num_old:], visual_logits=out.visual_logits[:, num_old:])
        if num_old and bool((labels < num_old).any()):
            raise ValueError("l2p: a clip of an old class in a rehearsal-free batch (the old logits are masked)")
        terms = classification_loss(masked, labels - num_old)
        pull = self.config.l2p.pull_weight * (out.audio_key_distance.mean() + out.visual_key_distance.mean())
        return {**terms, "pull": pull, "total": terms["ce_audio"] + terms["ce_visual"] + pull}

    def predict(self, out: L2POutput) -> dict[str, Tensor]:
        return softmax_predict(out)

    def embed(self, out: L2POutput, labels: Tensor) -> Tensor:
        return feature_embedding(out)
