"""The CIGN model: encoders, per-task class tokens, per-modality transformer + grouping, heads.

N is the number of classes seen so far (one class token, one group, one logit per class).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cign_fast.model.config import ModelConfig
from cign_fast.model.encoders import ResNetTokenEncoder
from cign_fast.model.grouping import GroupingBlock, keep_old_weights, set_noise_batch
from cign_fast.model.transformer import Transformer, init_weights
from cign_fast.ops.checks import check_float_tensor


class CIGNOutput(NamedTuple):
    """What :class:`CIGN` returns for a batch of B clips with N classes seen."""

    audio_logits: Tensor  # [B, N] pre-sigmoid class scores from the audio groups
    visual_logits: Tensor  # [B, N] pre-sigmoid class scores from the visual groups
    audio_token_logits: Tensor  # [B, N, N] token head on the audio class tokens (row i should predict class i)
    visual_token_logits: Tensor  # [B, N, N] token head on the visual class tokens
    audio_groups: Tensor  # [B, N, D] audio class embeddings
    visual_groups: Tensor  # [B, N, D] visual class embeddings
    audio_tokens: Tensor  # [B, S_a, D] the audio token map the branch read (what CIGN.encode returns)
    visual_tokens: Tensor  # [B, S_v, D] the visual token map


class ModalityBranch(nn.Module):
    """One modality: class tokens, transformer over [tokens ; class tokens], grouping block and heads.

    The class tokens are a list of per-task blocks [n_t, D]; every block but the newest is frozen.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dim = cfg.dim
        self.class_token_init = cfg.class_token_init
        self.class_tokens = nn.ParameterList()
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path)
        self.grouping = GroupingBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.backend, cfg.grouping_norms)
        self.token_norm = nn.LayerNorm(cfg.dim)
        self.token_head: nn.Linear | None = None
        self.group_norm = nn.LayerNorm(cfg.dim)
        self.logit_head = nn.Linear(cfg.dim, 1)
        self.apply(init_weights)

    def add_class_tokens(self, num_new: int) -> None:
        """Freeze the existing class-token blocks (dropping their stale gradients), append a trainable
        [num_new, D] block and grow the layers whose size is N.

        The token head ``Linear(D, N)`` keeps ``weight[:N_old]`` and ``bias[:N_old]``.
        """
        like = self.logit_head.weight
        for block in self.class_tokens:
            block.requires_grad_(False)
            block.grad = None
        block = nn.Parameter(torch.zeros(num_new, self.dim, device=like.device, dtype=like.dtype))
        if self.class_token_init == "trunc_normal":
            nn.init.trunc_normal_(block, std=0.02)
        self.class_tokens.append(block)
        num_groups = sum(block.shape[0] for block in self.class_tokens)
        self.grouping.set_num_groups(num_groups)
        token_head = nn.Linear(self.dim, num_groups, device=like.device, dtype=like.dtype)
        init_weights(token_head)
        if self.token_head is not None:
            keep_old_weights(token_head, self.token_head)
        self.token_head = token_head

    def forward(self, tokens: Tensor, assign_mode: str) -> tuple[Tensor, Tensor, Tensor]:
        """``tokens`` [B, S, D] -> ``(logits [B, N], token_logits [B, N, N], groups [B, N, D])``."""
        batch, num_tokens, _ = tokens.shape
        class_tokens = torch.cat(tuple(self.class_tokens)).unsqueeze(0).expand(batch, -1, -1)
        mixed = self.transformer(torch.cat((tokens, class_tokens.to(tokens.dtype)), dim=1))
        tokens, class_tokens = mixed[:, :num_tokens], mixed[:, num_tokens:]
        if self.token_head is None:
            raise RuntimeError("ModalityBranch: call add_class_tokens before the first forward")
        token_logits = self.token_head(self.token_norm(class_tokens))
        groups = self.grouping(tokens, class_tokens, assign_mode)
        logits = self.logit_head(self.group_norm(groups)).squeeze(-1)
        return logits, token_logits, groups


def check_model_inputs(cfg: ModelConfig, audio: Tensor, visual: Tensor) -> None:
    """Raise ValueError/TypeError naming ``audio`` or ``visual`` when its shape does not fit ``cfg``'s input mode
    (the checks of :class:`CIGN` and of the baselines' backbone)."""
    if cfg.input_mode == "raw":
        expected = {"audio": (4, 1, "[B, 1, F, T] log spectrogram"), "visual": (4, 3, "[B, 3, H, W] image")}
    else:
        audio_dim, visual_dim = cfg.feature_dims()
        expected = {
            "audio": (3, audio_dim, "[B, S_a, audio_feature_dim] features"),
            "visual": (3, visual_dim, "[B, S_v, visual_feature_dim] features"),
        }
    for name, tensor in (("audio", audio), ("visual", visual)):
        ndim, width, layout = expected[name]
        check_float_tensor(name, tensor, ndim)
        width_axis = 1 if ndim == 4 else 2
        if tensor.shape[width_axis] != width or min(tensor.shape) == 0:
            raise ValueError(
                f"{name}: expected a non-empty {layout} with {width} at axis {width_axis}, "
                f"got shape {tuple(tensor.shape)}"
            )
    if audio.shape[0] != visual.shape[0]:
        raise ValueError(f"audio, visual: expected the same batch size, got {audio.shape[0]} and {visual.shape[0]}")


class CIGN(nn.Module):
    """Class-Incremental Grouping Network (audio + visual).

    Build, then call :meth:`add_task` once per task before training it. Inputs:

    * ``input_mode="raw"``: ``audio`` [B, 1, F, T] log spectrogram, ``visual`` [B, 3, H, W] image;
    * ``input_mode="features"``: ``audio`` [B, S_a, D_a], ``visual`` [B, S_v, D_v] token sequences.

    Training uses ``cfg.assign_mode`` for the assignment, eval ``cfg.eval_assign_mode`` (by default hard
    after hard/gumbel training and soft after soft training, as the authors evaluate).
    After :meth:`add_task` some parameters are new objects: rebuild the optimiser.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self._task_sizes: list[int] = []
        self.audio_encoder: nn.Module
        self.visual_encoder: nn.Module
        if cfg.input_mode == "raw":
            pooled_audio = cfg.audio_tokens == "pooled"
            self.audio_encoder = ResNetTokenEncoder(
                1, cfg.dim, pooled_audio, cfg.audio_weights, "audio_weights", cfg.token_norm
            )
            self.visual_encoder = ResNetTokenEncoder(
                3, cfg.dim, False, cfg.visual_weights, "visual_weights", cfg.token_norm
            )
        else:
            audio_dim, visual_dim = cfg.feature_dims()
            self.audio_encoder = nn.Linear(audio_dim, cfg.dim)
            self.visual_encoder = nn.Linear(visual_dim, cfg.dim)
            init_weights(self.audio_encoder)
            init_weights(self.visual_encoder)
        self.audio_branch = ModalityBranch(cfg)
        self.visual_branch = ModalityBranch(cfg)
        self.encoders_frozen = False

    @property
    def task_sizes(self) -> list[int]:
        """Classes per task added so far (a copy)."""
        return list(self._task_sizes)

    @property
    def num_classes(self) -> int:
        """N: classes seen so far."""
        return sum(self._task_sizes)

    @property
    def num_old_classes(self) -> int:
        """Classes of the tasks before the newest one (0 with at most one task)."""
        return self.num_classes - self._task_sizes[-1] if self._task_sizes else 0

    def add_task(self, num_new_classes: int) -> None:
        """Start a task with ``num_new_classes`` classes: freeze the old class tokens, add new ones, grow N."""
        if not isinstance(num_new_classes, int) or isinstance(num_new_classes, bool) or num_new_classes <= 0:
            raise ValueError(f"num_new_classes: expected an int > 0, got {num_new_classes!r}")
        self.audio_branch.add_class_tokens(num_new_classes)
        self.visual_branch.add_class_tokens(num_new_classes)
        self._task_sizes.append(num_new_classes)

    def freeze_encoders(self) -> None:
        """Stop training the audio and visual encoders: no gradients, and evaluation mode from now on (BatchNorm
        statistics kept), so their token maps stay what they were (see ``distill.freeze_encoders``)."""
        self.encoders_frozen = True
        for encoder in (self.audio_encoder, self.visual_encoder):
            encoder.requires_grad_(False)
            encoder.eval()

    def train(self, mode: bool = True) -> CIGN:
        super().train(mode)
        if self.encoders_frozen:
            self.audio_encoder.eval()
            self.visual_encoder.eval()
        return self

    def check_inputs(self, audio: Tensor, visual: Tensor) -> None:
        """Raise ValueError/TypeError naming ``audio`` or ``visual`` when its shape does not fit the input mode."""
        check_model_inputs(self.cfg, audio, visual)

    def forward(self, audio: Tensor, visual: Tensor) -> CIGNOutput:
        return self.forward_tokens(*self.encode(audio, visual))

    def encode(self, audio: Tensor, visual: Tensor) -> tuple[Tensor, Tensor]:
        """The token maps the branches read: audio [B, S_a, D] and visual [B, S_v, D] (inputs checked)."""
        self.check_inputs(audio, visual)
        return self.audio_encoder(audio), self.visual_encoder(visual)

    def forward_tokens(self, audio_tokens: Tensor, visual_tokens: Tensor) -> CIGNOutput:
        """The branches on token maps [B, S_a, D] and [B, S_v, D] (what :meth:`encode` returns)."""
        if not self._task_sizes:
            raise RuntimeError("CIGN.forward: call add_task(num_new_classes) before the first forward")
        assign_mode = self.cfg.assign_mode if self.training else self.cfg.eval_assign_mode
        audio_logits, audio_token_logits, audio_groups = self.audio_branch(audio_tokens, assign_mode)
        visual_logits, visual_token_logits, visual_groups = self.visual_branch(visual_tokens, assign_mode)
        return CIGNOutput(
            audio_logits,
            visual_logits,
            audio_token_logits,
            visual_token_logits,
            audio_groups,
            visual_groups,
            audio_tokens,
            visual_tokens,
        )

    def set_noise_batch(self, offset: int, stride: int) -> None:
        """See :func:`cign_fast.model.grouping.set_noise_batch`."""
        set_noise_batch(self, offset, stride)

    @property
    def batch_slot(self) -> tuple[int, int]:
        """(offset, stride) of the local batch in the global one (data-parallel ranks), as set by
        :func:`cign_fast.model.grouping.set_noise_batch`."""
        return self.audio_branch.grouping.assign.noise_batch

    def frozen_copy(self) -> CIGN:
        """A deep copy in eval mode with no gradients anywhere: the distillation teacher."""
        teacher = copy.deepcopy(self)
        teacher.zero_grad(set_to_none=True)
        teacher.requires_grad_(False)
        return teacher.eval()


def predict(out: CIGNOutput, classification: str = "cross_entropy") -> dict[str, Tensor]:
    """Class indices [B] (long): ``"audio"`` argmax of the audio logits, ``"visual"`` likewise, ``"audio_visual"``
    the argmax of ``log p_a + log p_v`` (the product of the two modalities' class posteriors).

    p is the softmax over the classes after ``classification="cross_entropy"`` training and the per-class
    sigmoid after ``"bce"`` (the authors' heads; computed as log-sigmoids, so a saturated sigmoid makes no ties).
    """

    def log_probs(logits: Tensor) -> Tensor:
        if classification == "cross_entropy":
            return nn.functional.log_softmax(logits.float(), dim=-1)
        return nn.functional.logsigmoid(logits.float())

    audio_log_probs, visual_log_probs = log_probs(out.audio_logits), log_probs(out.visual_logits)
    return {
        "audio": out.audio_logits.argmax(dim=-1),
        "visual": out.visual_logits.argmax(dim=-1),
        "audio_visual": (audio_log_probs + visual_log_probs).argmax(dim=-1),
    }
