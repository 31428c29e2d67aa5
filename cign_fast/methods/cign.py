"""CIGN (Mo, Pian, Tian, ICCV 2023): class tokens, continual grouping and class-token distillation.

The model is :class:`cign_fast.model.CIGN`; the loss is :func:`cign_fast.model.cign_loss`: per-modality
classification (softmax cross-entropy, or the authors' BCE), the token head's cross-entropy and, at t > 0,
the distillation against the model frozen after the previous task, with the ``distill`` section's settings.
Predictions: audio ``argmax p_a``, visual ``argmax p_v``, audio-visual ``argmax p_a * p_v`` with p the
softmax (or, after BCE training, the per-class sigmoid) of the class logits (:func:`cign_fast.model.predict`).
Embedding of a clip: its own class's audio and visual group vectors, L2-normalised and concatenated.
Exemplar-free by default; ``memory.*`` adds replay of stored clips, ``distill.token_replay`` (a weight) the
replay of token maps drawn from per-class statistics kept after each task (:mod:`cign_fast.model.token_replay`,
not in the paper): those are classified among all classes seen, term ``"replay"``. ``distill.freeze_encoders``
stops the encoders' training after the first task, so the statistics stay true to the tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.base import ContinualMethod, TaskResources, rank_shard
from cign_fast.methods.registry import register_method
from cign_fast.model import CIGN, CIGNOutput, ModelConfig, cign_loss, predict
from cign_fast.model.losses import class_token_distillation, classification_loss
from cign_fast.model.token_replay import TokenStatistics

if TYPE_CHECKING:
    from cign_fast.train.config import TrainConfig


def class_embeddings(out: CIGNOutput, labels: Tensor) -> Tensor:
    """[B, 2D] float32: each clip's audio and visual group vectors of class ``labels[b]``, L2-normalised."""
    rows = torch.arange(labels.shape[0], device=labels.device)
    audio = F.normalize(out.audio_groups[rows, labels].float(), dim=-1)
    visual = F.normalize(out.visual_groups[rows, labels].float(), dim=-1)
    return torch.cat([audio, visual], dim=-1)


@register_method
class CIGNMethod(ContinualMethod):
    """CIGN as a method (module docstring); hyper-parameters in the ``model`` and ``distill`` sections."""

    name = "cign"
    loss_terms = ("cls_audio", "cls_visual", "token_ce", "kd", "replay", "replay_kd")
    memory_use = "optional"
    config_sections = ("distill",)

    def __init__(self, config: TrainConfig, model_config: ModelConfig) -> None:
        super().__init__(config, model_config)
        self.token_statistics = TokenStatistics()
        self.replay_draws = 0  # replay batches drawn so far: with run.seed, the seed of the next one

    @property
    def uses_teacher(self) -> bool:
        return self.config.distill.enabled

    def build_model(self) -> CIGN:
        return CIGN(self.model_config)

    def grow_model(self, model: nn.Module, num_new_classes: int) -> None:
        """Add the task's class tokens; with ``distill.freeze_encoders``, freeze the encoders from the second task
        on (also when a checkpoint is rebuilt, so a resumed run trains what the uninterrupted one did)."""
        super().grow_model(model, num_new_classes)
        assert isinstance(model, CIGN)
        if self.config.distill.freeze_encoders and len(model.task_sizes) > 1:
            model.freeze_encoders()

    def teacher_forward(self, audio: Tensor, visual: Tensor, out: CIGNOutput | None = None) -> CIGNOutput | None:
        """The teacher's output. With ``distill.freeze_encoders`` its encoders are the model's (frozen since
        the teacher was copied, both in eval mode), so it reads the token maps of ``out`` when given instead of
        encoding the batch again: the same output, one pass of both encoders less per step."""
        if self.teacher is None:
            return None
        if out is not None and self.config.distill.freeze_encoders:
            assert isinstance(self.teacher, CIGN)
            return self.teacher.forward_tokens(out.audio_tokens, out.visual_tokens)
        return self.teacher(audio, visual)

    def loss(
        self, model: nn.Module, out: CIGNOutput, labels: Tensor, teacher_out: CIGNOutput | None
    ) -> dict[str, Tensor]:
        distill = self.config.distill
        terms = cign_loss(
            out,
            labels,
            teacher_out,
            self.current_task.num_old_classes,
            temperature=distill.temperature,
            kd_weight=distill.weight,
            backend=self.model_config.backend,
            distill_form=distill.form,
            classification=distill.classification,
            old_class_negatives=distill.old_class_negatives,
            token_weight=distill.token_weight,
        )
        terms = {**terms, **self.replay_loss(model, labels)}
        return {**terms, "total": terms["total"] + terms["replay"] + terms["replay_kd"]}

    def replay_loss(self, model: nn.Module, labels: Tensor) -> dict[str, Tensor]:
        """``"replay"``: ``distill.token_replay`` x the classification loss of as many replayed clips as the batch
        has, of old classes drawn uniformly, over all classes seen; ``"replay_kd"``: with ``distill.replay_kd``,
        ``distill.weight`` x the head distillation against the teacher on the same replayed clips (both 0 at the
        first task or with the weight 0)."""
        distill = self.config.distill
        weight, old = distill.token_replay, self.current_task.num_old_classes
        zero = labels.new_zeros((), dtype=torch.float32)
        if weight == 0 or old == 0:
            return {"replay": zero, "replay_kd": zero}
        assert isinstance(model, CIGN)
        if self.token_statistics.num_classes < old:
            raise RuntimeError(
                f"distill.token_replay: statistics for {self.token_statistics.num_classes} classes, the old "
                f"classes are {old}; they are kept when a task ends (resume from a '-done' checkpoint)"
            )
        # drawn for the global batch from a generator seeded by (run.seed, draw number) and sliced like the data:
        # every data-parallel rank, and a resumed run, replays what one uninterrupted process would
        generator = torch.Generator().manual_seed((self.config.run.seed << 32) + self.replay_draws)
        self.replay_draws += 1
        offset, stride = model.batch_slot
        drawn = torch.randint(0, old, (labels.shape[0] * stride,), generator=generator)
        local = slice(offset, None, stride)
        audio, visual = self.token_statistics.sample(drawn, generator, spread=self.config.distill.replay_spread)
        replayed = drawn[local].to(labels.device)
        out = model.forward_tokens(audio[local].to(labels.device), visual[local].to(labels.device))
        audio, visual = (
            classification_loss(logits.float(), replayed, old, distill.classification, old_class_negatives=True)
            for logits in (out.audio_logits, out.visual_logits)
        )
        replay_kd = zero
        if distill.replay_kd and self.teacher is not None:  # no teacher without distill.enabled
            assert isinstance(self.teacher, CIGN)
            with torch.no_grad():
                teacher_out = self.teacher.forward_tokens(out.audio_tokens, out.visual_tokens)
            replay_kd = distill.weight * class_token_distillation(
                out, teacher_out, old, distill.temperature, self.model_config.backend, distill.form, token_heads=False
            )
        return {"replay": weight * (audio + visual), "replay_kd": replay_kd}

    def end_task(self, model: nn.Module, resources: TaskResources) -> None:
        """With ``distill.token_replay``: keep the new classes' token statistics (the model in eval mode)."""
        if self.config.distill.token_replay == 0:
            return
        assert isinstance(model, CIGN)
        first, stop = resources.task.class_range(resources.task.index)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            batches = (
                (*model.encode(audio, visual), labels)
                for audio, visual, labels in resources.batches(rank_shard(resources.task_indices, resources.context))
            )
            self.token_statistics.add_classes(batches, first, stop, resources.all_reduce_sum)
        model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "token_statistics": self.token_statistics.state_dict(),
            "replay_draws": self.replay_draws,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.token_statistics.load_state_dict(state["token_statistics"])
        self.replay_draws = int(state["replay_draws"])

    def predict(self, out: CIGNOutput) -> dict[str, Tensor]:
        return predict(out, self.config.distill.classification)

    def embed(self, out: CIGNOutput, labels: Tensor) -> Tensor:
        return class_embeddings(out, labels)
