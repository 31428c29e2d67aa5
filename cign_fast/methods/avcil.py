"""AV-CIL: Audio-Visual Class-Incremental Learning (Pian, Mo, Guo, Tian, ICCV 2023), in features mode.

AV-CIL's own model over pre-extracted tokens (the paper's AudioMAE / VideoMAE features; ``data.input_mode:
features`` only), not the shared backbone: it has no transformer of its own.

* Audio-guided visual attention. The audio query is the mean of the audio tokens, a [B, D_a]; the visual
  tokens [B, S_v, D_v] are read as F = ``avcil.frames`` frames of P = S_v / F patches (8 x 196 for AV-CIL's
  VideoMAE features, time-major). With ``q = tanh(W_q a)`` [B, D_v] and ``k = tanh(W_k v)`` [B, F, P, D_v]:
  spatial scores ``k * q`` and weights ``alpha = softmax over the P patches``, separately for every frame and
  every channel; temporal scores ``(sum_p alpha k) * q`` [B, F, D_v] and weights ``beta = softmax over the F
  frames``, per channel. The pooled visual feature is ``sum_f beta sum_p alpha v`` [B, D_v]: where and when
  the visual stream is looked at depends on the sound.
* Audio-visual fusion: ``f_a = relu(W_a a)``, ``f_v = relu(W_v pooled)`` (width ``model.dim``), and one growing
  linear classifier on their sum, ``z = C(f_a + f_v)``.
* Predictions: audio-visual ``argmax z``; audio ``argmax C(f_a)`` and visual ``argmax C(f_v)``, the same
  classifier on one modality's half of the sum (C is linear, so ``z = C(f_a) + C(f_v) - b``). The paper
  reports only the audio-visual column for AV-CIL; these two say what each branch contributes. The visual
  branch sees the audio through the attention.
* Loss at t > 0 (``ce + kd + instance + class + attention``), over a batch of the task's clips and exemplars:

  - ``ce``: the separated softmax of SS-IL (:func:`cign_fast.methods.ssil.separated_cross_entropy`): a new
    clip's cross-entropy over the new classes' logits, an exemplar's over the old classes' (as the authors'
    code: ``loss_curr`` and ``loss_prev``); at t = 0 the plain cross-entropy.
  - ``kd``: task-wise distillation of z towards the old model, ``T^2 KL`` within each old task's classes, T = 2
    (``avcil.temperature``; :func:`cign_fast.methods.ssil.task_wise_distillation`).
  - D-AVSC, the dual audio-visual similarity constraint, on the L2-normalised f_a, f_v of the batch:
    ``instance`` = ``avcil.instance_weight`` x the InfoNCE loss that picks each clip's own visual feature
    among the batch's for its audio feature (temperature ``avcil.instance_temperature``), and ``class`` =
    ``avcil.class_weight`` x ``-mean_ij [y_i = y_j] log softmax_j(<f_a,i, f_v,j> / tau_C)``: every visual
    feature of the audio's class is a positive (temperature ``avcil.class_temperature``). This is the
    authors' released form, averaged over all B pairs; the paper's eq. 7 divides by the positives instead
    (the authors note their weights are tuned for the released form). With the exemplars in the batch, the
    constraint keeps the old classes' audio-visual similarity structure while the new classes are learned.
  - VAD, visual attention distillation: on the exemplars of the batch (clips of old classes),
    ``KL(alpha_old || alpha)`` summed over frames and channels and ``KL(beta_old || beta)`` summed over
    channels, per exemplar, averaged over the exemplars: ``attention = avcil.spatial_weight x spatial +
    avcil.temporal_weight x temporal``.
* Memory: AV-CIL replays exemplars (picked at random by the authors; ``memory.selection: random``), so it
  refuses to run without a memory; its totals are 340 (AVE), 500 (Kinetics-Sounds), 1500 (VGGSound100).
* Defaults from the authors' ``run_incremental_ours.sh``: lambda_I = 0.1 (0.5 on AVE), lambda_C = 1,
  tau_I = tau_C = 0.05, VAD lambda = 0.5 (spatial 0.5, temporal 0.5), T = 2.
* Simplifications: the trainer's batches mix the task's clips and the exemplars as its sampler draws them,
  where the authors draw a batch of each and concatenate them; D-AVSC and VAD are applied at t > 0 only, as
  in the authors' code; their special case of AVE in 4-class steps at step 1 (plain cross-entropy) is not
  copied; the projection widths are ``model.dim`` (768 in the paper, the features' width); the trainer's
  optimiser and schedule (Adam as the authors', without their best-epoch selection on the validation set).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.backbone import GrowingHead, GrowingModel, modality_embedding
from cign_fast.methods.base import ContinualMethod
from cign_fast.methods.registry import register_method
from cign_fast.methods.ssil import separated_cross_entropy, task_wise_distillation
from cign_fast.model import ModelConfig
from cign_fast.model.cign import check_model_inputs
from cign_fast.model.losses import check_labels


class AVCILOutput(NamedTuple):
    """What :class:`AVCILModel` returns for B clips with N classes seen."""

    logits: Tensor  # [B, N] z = C(f_a + f_v), the audio-visual prediction
    audio_logits: Tensor  # [B, N] C(f_a)
    visual_logits: Tensor  # [B, N] C(f_v)
    audio_features: Tensor  # [B, D] f_a
    visual_features: Tensor  # [B, D] f_v
    spatial_scores: Tensor  # [B, F, P, D_v] attention scores over each frame's patches, per channel
    temporal_scores: Tensor  # [B, F, D_v] attention scores over the frames, per channel


def split_frames(visual: Tensor, frames: int) -> Tensor:
    """[B, S_v, D_v] time-major visual tokens -> [B, F, S_v / F, D_v]."""
    batch, tokens, width = visual.shape
    if tokens % frames:
        raise ValueError(
            f"avcil.frames: the visual features have {tokens} tokens, not a multiple of {frames} frames; set "
            "avcil.frames to their number of temporal positions (8 for AV-CIL's VideoMAE features, 1 for one frame)"
        )
    return visual.reshape(batch, frames, tokens // frames, width)


class AudioGuidedVisualAttention(nn.Module):
    """AV-CIL's spatial then temporal attention over the visual tokens, guided by the audio (module docstring)."""

    def __init__(self, audio_dim: int, visual_dim: int) -> None:
        super().__init__()
        self.audio_query = nn.Linear(audio_dim, visual_dim)
        self.visual_key = nn.Linear(visual_dim, visual_dim)

    def scores(self, audio: Tensor, visual: Tensor) -> tuple[Tensor, Tensor]:
        """``(spatial [B, F, P, D_v], temporal [B, F, D_v])`` scores of ``audio`` [B, D_a] and ``visual``
        [B, F, P, D_v]."""
        query = torch.tanh(self.audio_query(audio))  # [B, D_v]
        keys = torch.tanh(self.visual_key(visual))  # [B, F, P, D_v]
        spatial = keys * query[:, None, None, :]
        frame_keys = (F.softmax(spatial, dim=2) * keys).sum(dim=2)  # [B, F, D_v]
        return spatial, frame_keys * query[:, None, :]

    def forward(self, audio: Tensor, visual: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(pooled visual feature [B, D_v], spatial scores, temporal scores)``."""
        spatial, temporal = self.scores(audio, visual)
        per_frame = (F.softmax(spatial, dim=2) * visual).sum(dim=2)  # [B, F, D_v]
        return (F.softmax(temporal, dim=1) * per_frame).sum(dim=1), spatial, temporal


class AVCILModel(GrowingModel):
    """AV-CIL's classifier over features ``audio`` [B, S_a, D_a], ``visual`` [B, S_v, D_v]; call
    :meth:`add_task` before each task."""

    def __init__(self, cfg: ModelConfig, frames: int) -> None:
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
        if cfg.input_mode != "features":
            raise ValueError(f"input_mode: AV-CIL runs on pre-extracted features, got {cfg.input_mode!r}")
        self.cfg = cfg
        self.frames = frames
        audio_dim, visual_dim = cfg.feature_dims()
        self.attention = AudioGuidedVisualAttention(audio_dim, visual_dim)
        self.audio_proj = nn.Linear(audio_dim, cfg.dim)
        self.visual_proj = nn.Linear(visual_dim, cfg.dim)
        self.head = GrowingHead(cfg.dim)

    def add_classes(self, num_new_classes: int) -> None:
        """Grow the classifier by ``num_new_classes`` outputs."""
        self.head.add_classes(num_new_classes, self.audio_proj.weight)

    def forward(self, audio: Tensor, visual: Tensor) -> AVCILOutput:
        if not self._task_sizes:
            raise RuntimeError("AVCILModel.forward: call add_task(num_new_classes) before the first forward")
        check_model_inputs(self.cfg, audio, visual)
        query = audio.mean(dim=1)
        pooled, spatial, temporal = self.attention(query, split_frames(visual, self.frames))
        audio_features = F.relu(self.audio_proj(query))
        visual_features = F.relu(self.visual_proj(pooled))
        return AVCILOutput(
            self.head(audio_features + visual_features),
            self.head(audio_features),
            self.head(visual_features),
            audio_features,
            visual_features,
            spatial,
            temporal,
        )


def similarity_scores(audio_features: Tensor, visual_features: Tensor, temperature: float) -> Tensor:
    """[B, B] ``<a_i, v_j> / tau`` of the L2-normalised features [B, D]."""
    return F.normalize(audio_features, dim=-1) @ F.normalize(visual_features, dim=-1).t() / temperature


def instance_similarity_loss(audio_features: Tensor, visual_features: Tensor, temperature: float) -> Tensor:
    """D-AVSC's instance-aware term: each audio feature's cross-entropy of picking its own clip's visual feature."""
    scores = similarity_scores(audio_features, visual_features, temperature)
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))


def class_similarity_loss(
    audio_features: Tensor, visual_features: Tensor, labels: Tensor, temperature: float
) -> Tensor:
    """D-AVSC's class-aware term: ``-mean_ij [y_i = y_j] log softmax_j(<a_i, v_j> / tau)`` (the authors' form)."""
    scores = similarity_scores(audio_features, visual_features, temperature)
    same_class = (labels[:, None] == labels[None, :]).to(scores.dtype)
    return -(F.log_softmax(scores, dim=-1) * same_class).mean()


def attention_distillation(scores: Tensor, old_scores: Tensor, dim: int, rows: Tensor) -> Tensor:
    """VAD: ``KL(softmax(old) || softmax(new))`` along ``dim``, summed over every other axis of the clips
    ``rows`` selects [B] (bool), divided by their count (0 without any)."""
    if scores.shape != old_scores.shape:
        raise ValueError(
            f"old_scores: expected the new scores' shape {tuple(scores.shape)}, got {tuple(old_scores.shape)}"
        )
    count = int(rows.sum())
    if count == 0:
        return scores.new_zeros(())
    log_new = F.log_softmax(scores[rows], dim=dim)
    log_old = F.log_softmax(old_scores[rows], dim=dim)
    return (log_old.exp() * (log_old - log_new)).sum() / count


@register_method
class AVCIL(ContinualMethod[AVCILOutput]):
    """Audio-guided visual attention, separated softmax and task-wise KD, D-AVSC and VAD, with replay
    (module docstring)."""

    name = "avcil"
    loss_terms = ("ce", "kd", "instance", "class", "attention")
    memory_use = "required"
    config_sections = ("avcil",)
    input_modes = ("features",)
    uses_teacher = True

    def build_model(self) -> AVCILModel:
        return AVCILModel(self.model_config, self.config.avcil.frames)

    def loss(
        self, model: nn.Module, out: AVCILOutput, labels: Tensor, teacher_out: AVCILOutput | None
    ) -> dict[str, Tensor]:
        batch, num_classes = out.logits.shape
        check_labels(labels, batch, num_classes)
        task, settings = self.current_task, self.config.avcil
        num_old = task.num_old_classes
        terms = {"ce": separated_cross_entropy(out.logits, labels, num_old)}
        if teacher_out is None:
            terms.update(dict.fromkeys(("kd", "instance", "class", "attention"), out.logits.new_zeros(())))
        else:
            old = labels < num_old  # the exemplars of the batch
            terms["kd"] = task_wise_distillation(
                out.logits, teacher_out.logits, task, settings.temperature, self.model_config.backend
            )
            terms["instance"] = settings.instance_weight * instance_similarity_loss(
                out.audio_features, out.visual_features, settings.instance_temperature
            )
            terms["class"] = settings.class_weight * class_similarity_loss(
                out.audio_features, out.visual_features, labels, settings.class_temperature
            )
            terms["attention"] = settings.spatial_weight * attention_distillation(
                out.spatial_scores, teacher_out.spatial_scores, 2, old
            ) + settings.temporal_weight * attention_distillation(
                out.temporal_scores, teacher_out.temporal_scores, 1, old
            )
        return {**terms, "total": sum(terms.values(), out.logits.new_zeros(()))}

    def predict(self, out: AVCILOutput) -> dict[str, Tensor]:
        return {
            "audio": out.audio_logits.argmax(dim=-1),
            "visual": out.visual_logits.argmax(dim=-1),
            "audio_visual": out.logits.argmax(dim=-1),
        }

    def embed(self, out: AVCILOutput, labels: Tensor) -> Tensor:
        return modality_embedding(out.audio_features, out.visual_features)
