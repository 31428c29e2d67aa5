"""The shared backbone of the baselines, and the defaults of the methods built on it.

For a fair comparison every baseline runs on CIGN's own encoders and per-modality transformer; only
the class tokens and the grouping block are replaced by mean pooling and a linear head:

    audio  -> encoder -> transformer -> LayerNorm -> mean over tokens -> f_a [B, D] -> Linear(D, N) -> audio logits
    visual -> encoder -> transformer -> LayerNorm -> mean over tokens -> f_v [B, D] -> Linear(D, N) -> visual logits

Encoders as in CIGN: a ResNet-18 token map (1x1 conv to D, L2-normalised) in raw mode, a Linear projection of
the pre-extracted tokens in features mode. N is the number of classes seen; both heads grow at every task
with the old rows kept. The audio-visual prediction is late fusion, the product of the two modalities'
class posteriors (CIGN's rule): ``argmax_c log p_a(c) + log p_v(c)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import cign_fast
from cign_fast.methods.base import ContinualMethod
from cign_fast.model import ModelConfig
from cign_fast.model.cign import check_model_inputs
from cign_fast.model.encoders import ResNetTokenEncoder
from cign_fast.model.grouping import keep_old_weights
from cign_fast.model.losses import check_labels
from cign_fast.model.transformer import Transformer, init_weights


class BackboneOutput(NamedTuple):
    """What :class:`Backbone` returns for B clips with N classes seen."""

    audio_logits: Tensor  # [B, N] audio head
    visual_logits: Tensor  # [B, N] visual head
    audio_features: Tensor  # [B, D] f_a: mean of the audio tokens, the audio head's input
    visual_features: Tensor  # [B, D] f_v
    audio_tokens: Tensor  # [B, S_a, D] audio tokens after the transformer (intermediate features)
    visual_tokens: Tensor  # [B, S_v, D] visual tokens after the transformer


class ClassHead(nn.Module, ABC):
    """A branch's classifier [B, D] -> [B, N] whose N grows task by task (:class:`GrowingHead`, PODNet's LSC)."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """N: the classes it scores."""

    @abstractmethod
    def add_classes(self, num_new: int, like: Tensor) -> None:
        """Grow by ``num_new`` classes on ``like``'s device and dtype, the old classes' weights kept."""


class HeadOutputs(Protocol):
    """What the backbone methods' losses, predictions and embeddings read of a model output: the heads'
    logits and their input features, as :class:`BackboneOutput` and L2P's output have them."""

    @property
    def audio_logits(self) -> Tensor: ...  # [B, N]

    @property
    def visual_logits(self) -> Tensor: ...  # [B, N]

    @property
    def audio_features(self) -> Tensor: ...  # [B, D]

    @property
    def visual_features(self) -> Tensor: ...  # [B, D]


class GrowingHead(ClassHead):
    """``Linear(D, N)`` whose N grows task by task; :meth:`add_classes` keeps the old rows in place."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear: nn.Linear | None = None

    @property
    def num_classes(self) -> int:
        return 0 if self.linear is None else self.linear.out_features

    def add_classes(self, num_new: int, like: Tensor) -> None:
        """Replace the layer by a ``Linear(D, N + num_new)`` on ``like``'s device and dtype."""
        grown = nn.Linear(self.dim, self.num_classes + num_new, device=like.device, dtype=like.dtype)
        init_weights(grown)
        if self.linear is not None:
            keep_old_weights(grown, self.linear)
        self.linear = grown

    def forward(self, features: Tensor) -> Tensor:
        """[B, D] -> [B, N]."""
        if self.linear is None:
            raise RuntimeError("GrowingHead: call add_classes before the first forward")
        return self.linear(features)


class BackboneBranch(nn.Module):
    """One modality: encoder, transformer, LayerNorm, mean pooling, growing head (any :class:`ClassHead`
    can replace it: PODNet's LSC)."""

    def __init__(self, encoder: nn.Module, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head: ClassHead = GrowingHead(cfg.dim)
        self.transformer.apply(init_weights)
        self.norm.apply(init_weights)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits [B, N], features [B, D], tokens [B, S, D])``."""
        tokens = self.norm(self.transformer(self.encoder(inputs)))
        features = tokens.mean(dim=1)
        return self.head(features), features, tokens


def build_encoders(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """CIGN's encoders for ``cfg``: ``(audio, visual)``, each mapping its input to tokens [B, S, D]."""
    if cfg.input_mode == "raw":
        audio = ResNetTokenEncoder(1, cfg.dim, cfg.audio_tokens == "pooled", cfg.audio_weights, "audio_weights")
        visual = ResNetTokenEncoder(3, cfg.dim, False, cfg.visual_weights, "visual_weights")
        return audio, visual
    audio_dim, visual_dim = cfg.feature_dims()
    projections = nn.Linear(audio_dim, cfg.dim), nn.Linear(visual_dim, cfg.dim)
    for projection in projections:
        init_weights(projection)
    return projections


class GrowingModel(nn.Module):
    """A classifier grown a task at a time: :meth:`add_task` checks the class count, lets :meth:`add_classes`
    grow the outputs and records the task."""

    def __init__(self) -> None:
        super().__init__()
        self._task_sizes: list[int] = []

    @property
    def task_sizes(self) -> list[int]:
        """Classes per task added so far (a copy)."""
        return list(self._task_sizes)

    def add_task(self, num_new_classes: int) -> None:
        """Grow the outputs by ``num_new_classes`` classes (old rows kept)."""
        if not isinstance(num_new_classes, int) or isinstance(num_new_classes, bool) or num_new_classes <= 0:
            raise ValueError(f"num_new_classes: expected an int > 0, got {num_new_classes!r}")
        self.add_classes(num_new_classes)
        self._task_sizes.append(num_new_classes)

    def add_classes(self, num_new_classes: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}.add_classes")


class BackboneBranches(GrowingModel):
    """The two branches of the backbone and the classes per task; :class:`Backbone` (and L2P's prompted
    backbone) adds the forward pass. Call :meth:`add_task` before each task."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        audio_encoder, visual_encoder = build_encoders(cfg)
        self.audio_branch = BackboneBranch(audio_encoder, cfg)
        self.visual_branch = BackboneBranch(visual_encoder, cfg)

    def add_classes(self, num_new_classes: int) -> None:
        """Grow both heads by ``num_new_classes`` outputs."""
        like = self.audio_branch.norm.weight
        self.audio_branch.head.add_classes(num_new_classes, like)
        self.visual_branch.head.add_classes(num_new_classes, like)


class Backbone(BackboneBranches):
    """The baselines' audio-visual classifier (module docstring). Call :meth:`add_task` before each task.

    Inputs as :class:`cign_fast.model.CIGN`'s: raw ``audio`` [B, 1, F, T], ``visual`` [B, 3, H, W], or
    features ``audio`` [B, S_a, D_a], ``visual`` [B, S_v, D_v].
    """

    def forward(self, audio: Tensor, visual: Tensor) -> BackboneOutput:
        if not self._task_sizes:
            raise RuntimeError("Backbone.forward: call add_task(num_new_classes) before the first forward")
        check_model_inputs(self.cfg, audio, visual)  # the same checks and messages as CIGN's
        audio_logits, audio_features, audio_tokens = self.audio_branch(audio)
        visual_logits, visual_features, visual_tokens = self.visual_branch(visual)
        return BackboneOutput(audio_logits, visual_logits, audio_features, visual_features, audio_tokens, visual_tokens)


def late_fusion_predict(audio_log_probs: Tensor, visual_log_probs: Tensor) -> dict[str, Tensor]:
    """Class indices [B]: argmax of each modality's log-probabilities [B, N], and of their sum (audio-visual)."""
    return {
        "audio": audio_log_probs.argmax(dim=-1),
        "visual": visual_log_probs.argmax(dim=-1),
        "audio_visual": (audio_log_probs.float() + visual_log_probs.float()).argmax(dim=-1),
    }


def modality_log_probs(audio_logits: Tensor, visual_logits: Tensor) -> dict[str, Tensor]:
    """[B, N] float32 log-posteriors per modality: each head's log-softmax, and for ``"audio_visual"`` the
    normalised product of the two (``log_softmax(log p_a + log p_v)``, whose argmax is late fusion's)."""
    audio, visual = F.log_softmax(audio_logits.float(), dim=-1), F.log_softmax(visual_logits.float(), dim=-1)
    return {"audio": audio, "visual": visual, "audio_visual": F.log_softmax(audio + visual, dim=-1)}


def modality_embedding(audio_features: Tensor, visual_features: Tensor) -> Tensor:
    """[B, D_a + D_v] float32: ``concat(normalize(f_a), normalize(f_v))`` of two per-clip features."""
    return torch.cat(
        [F.normalize(audio_features.float(), dim=-1), F.normalize(visual_features.float(), dim=-1)], dim=-1
    )


def softmax_predict(out: HeadOutputs) -> dict[str, Tensor]:
    """Late fusion of the two heads' softmaxes (:func:`late_fusion_predict` of their log-softmaxes)."""
    return late_fusion_predict(
        F.log_softmax(out.audio_logits.float(), dim=-1), F.log_softmax(out.visual_logits.float(), dim=-1)
    )


def feature_embedding(out: HeadOutputs) -> Tensor:
    """[B, 2D] float32: ``concat(normalize(f_a), normalize(f_v))``."""
    return modality_embedding(out.audio_features, out.visual_features)


def classification_loss(out: HeadOutputs, labels: Tensor) -> dict[str, Tensor]:
    """``"ce_audio"``, ``"ce_visual"``: softmax cross-entropy of each head over the N classes seen (batch means)."""
    batch, num_classes = out.audio_logits.shape
    check_labels(labels, batch, num_classes)
    return {
        "ce_audio": F.cross_entropy(out.audio_logits, labels.long()),
        "ce_visual": F.cross_entropy(out.visual_logits, labels.long()),
    }


class BackboneMethod(ContinualMethod[BackboneOutput]):
    """The defaults of the backbone methods: softmax cross-entropy per head, late-fusion prediction
    (module docstring), ``concat(normalize(f_a), normalize(f_v))`` as the embedding."""

    loss_terms: ClassVar[tuple[str, ...]] = ("ce_audio", "ce_visual")

    def build_model(self) -> Backbone:
        return Backbone(self.model_config)

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        terms = classification_loss(out, labels)
        return {**terms, "total": terms["ce_audio"] + terms["ce_visual"]}

    def predict(self, out: BackboneOutput) -> dict[str, Tensor]:
        return softmax_predict(out)

    def embed(self, out: BackboneOutput, labels: Tensor) -> Tensor:
        return feature_embedding(out)


def distill_old_classes(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    backend: str,
    columns: tuple[int, int] | None = None,
) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student[:, :N_old] / T))``, batch mean, by the fused
    :func:`cign_fast.token_distill_kl`: ``student_logits`` [B, N], ``teacher_logits`` [B, N_old];
    ``columns`` restricts both softmaxes to a range of the old classes (all of them by default)."""
    num_old = teacher_logits.shape[1]
    if student_logits.shape[0] != teacher_logits.shape[0] or student_logits.shape[1] < num_old:
        raise ValueError(
            f"teacher_logits: expected [B, N_old] with B = {student_logits.shape[0]} and "
            f"N_old <= {student_logits.shape[1]}, got {tuple(teacher_logits.shape)}"
        )
    return cign_fast.token_distill_kl(
        student_logits[:, :num_old], teacher_logits, temperature=temperature, columns=columns, backend=backend
    )
