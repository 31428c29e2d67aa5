"""AFC: Class-Incremental Learning by Knowledge Distillation with Adaptive Feature Consolidation (Kang, Park,
Han, CVPR 2022), on the backbone.

AFC is PODNet with its feature distillation weighted channel by channel by how much each channel matters to
the old model's classification loss.

* Classifier and classification loss: PODNet's (:mod:`cign_fast.methods.podnet`): per head a local
  similarity classifier with K = ``afc.proxies`` (10) proxies per class and a learned scale, trained with the
  NCA loss of margin ``afc.margin`` (0.6).
* Channel importance, estimated when a task ends (after its balanced fine-tuning, as the authors' code) on
  the task's training clips (its new clips and the old exemplars), the model in eval mode: for each
  modality's token map F [S, D] after the transformer (S tokens, D channels), ``I_c = mean over clips of
  sum_s (d l / d F_sc)^2`` with l the clip's NCA loss of that modality's head, then divided by the mean
  over the channels (so the importances average 1). The paper derives I_c from a second-order expansion of
  the change in the loss when the features move; it is the squared gradient of the classification loss.
  The importances of task t-1 are those of the model that is frozen as the old model of task t.
* Distillation at t > 0, per modality: the squared token maps of the model and of the old model, each
  channel's profile over the S tokens L2-normalised (the authors' ``collapse_channels: pixel``), then
  ``mean over clips and channels of I_c |profile_c - profile_old,c|_2``; ``afc = afc.weight * sqrt(N / N_new)
  * (audio + visual)`` (N classes seen, N_new new; the authors' ``scheduled_factor`` 4). A channel of zero
  importance is not distilled. With a single token (a pooled feature, as AV-CIL's audio), a channel's
  one-token profile normalises to 1 whatever the feature, so the map is then normalised over the channels
  instead (the channels are then coupled through the norm).
* Balanced fine-tuning (the authors' ``finetuning_config``, in ``end_task`` at t > 0): the backbone frozen,
  the proxies of both heads are trained for ``afc.finetune_epochs`` (20) epochs on the memory just updated,
  which holds as many exemplars of the new classes as of the old ones, with the NCA loss, by SGD (lr
  ``afc.finetune_lr`` 0.05, momentum 0.9, the run's weight decay, mini-batches of ``optim.batch_size``,
  shuffled from ``run.seed`` and the task). The backbone being frozen, the exemplars' features are computed
  once (eval mode) and the proxies are fit on them; the learned scales stay fixed, as the authors tune the
  classifier only. The fine-tuned heads are part of the model, checkpointed after the task.
* Memory: herding exemplars, 20 per class in the paper (PODNet's protocol); AFC refuses to run without them.
* Audio-visual: each modality has its own importances, distillation and head; predictions as PODNet's:
  argmax of each head, audio-visual late fusion of the two softmaxes (:mod:`cign_fast.methods.backbone`).
* Departures: the distilled maps are the two final token maps (the paper distils every ResNet stage, and
  the backbone has one token map per modality); new classes' proxies start at random (the paper imprints
  them from k-means of the new data's features), and the old proxies are not frozen during training (the
  paper's learning rate 0 for them), as in the PODNet port; the trainer's Adam and schedule instead of the
  paper's SGD recipe.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cign_fast.methods.backbone import BackboneMethod, BackboneOutput
from cign_fast.methods.base import TaskResources, eval_outputs, rank_shard
from cign_fast.methods.podnet import PODBackbone, nca_loss
from cign_fast.methods.registry import register_method
from cign_fast.model import ModelConfig
from cign_fast.model.losses import check_labels

if TYPE_CHECKING:  # importing it at run time would be circular
    from cign_fast.train.config import TrainConfig

MODALITIES = ("audio", "visual")
FINETUNE_MOMENTUM = 0.9


def channel_profiles(tokens: Tensor) -> Tensor:
    """[B, S, D] -> [B, S, D]: the squared map with each channel's profile over the S tokens L2-normalised
    (over the D channels when S = 1, where a one-token profile would be 1 whatever the feature)."""
    return F.normalize(tokens.pow(2), dim=1 if tokens.shape[1] > 1 else 2)


def importance_weighted_distillation(tokens: Tensor, old_tokens: Tensor, importance: Tensor) -> Tensor:
    """AFC's distillation of one token map: ``mean_{b,c} I_c |profile_bc - profile_old,bc|_2`` (module docstring)."""
    if tokens.shape != old_tokens.shape:
        raise ValueError(
            f"old_tokens: expected the new map's shape {tuple(tokens.shape)}, got {tuple(old_tokens.shape)}"
        )
    if importance.shape != (tokens.shape[2],):
        raise ValueError(f"importance: expected [{tokens.shape[2]}] (one per channel), got {tuple(importance.shape)}")
    distances = (channel_profiles(tokens) - channel_profiles(old_tokens)).norm(dim=1)  # [B, D]
    return (importance.to(distances) * distances).mean()


def head_nca_losses(model: nn.Module, out: BackboneOutput, labels: Tensor, margin: float) -> dict[str, Tensor]:
    """``{modality: NCA loss of its head}`` (batch means) for ``model``'s learned scales."""
    return {
        modality: nca_loss(
            getattr(out, f"{modality}_logits"),
            labels,
            getattr(model, f"{modality}_branch").head.scale.float(),
            margin,
        )
        for modality in MODALITIES
    }


def squared_token_gradients(
    model: nn.Module, batches: Iterator[tuple[Tensor, Tensor, Tensor]], margin: float
) -> tuple[dict[str, Tensor], int]:
    """``({modality: [D] sum over clips and tokens of (d l / d F)^2}, clips)``: l each clip's NCA loss, F its
    token map; the model in eval mode (its mode restored), no parameter gradient kept."""
    sums: dict[str, Tensor] = {}
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for audio, visual, labels in batches:
                out = model(audio.float(), visual.float())
                losses = head_nca_losses(model, out, labels.long(), margin)
                total = (losses["audio"] + losses["visual"]) * labels.shape[0]  # the sum of the clips' losses
                maps = [getattr(out, f"{modality}_tokens") for modality in MODALITIES]
                gradients = torch.autograd.grad(total, maps, allow_unused=True)
                for modality, tokens, gradient in zip(MODALITIES, maps, gradients, strict=True):
                    squared = torch.zeros_like(tokens[0, 0]) if gradient is None else gradient.pow(2).sum(dim=(0, 1))
                    sums[modality] = sums[modality] + squared if modality in sums else squared
                count += labels.shape[0]
    finally:
        model.train(was_training)
    return sums, count


def normalised_importance(sums: Tensor, count: float) -> Tensor:
    """``sums / count`` divided by its mean over the channels (all zeros stay zeros)."""
    mean_squares = sums / max(count, 1.0)
    scale = mean_squares.mean()
    return mean_squares / scale if float(scale) > 0 else mean_squares


@register_method
class AFC(BackboneMethod):
    """PODNet's classifier with importance-weighted feature distillation and balanced fine-tuning (module docstring)."""

    name = "afc"
    loss_terms = ("nca_audio", "nca_visual", "afc")
    memory_use = "required"
    config_sections = ("afc",)
    uses_teacher = True

    def __init__(self, config: TrainConfig, model_config: ModelConfig) -> None:
        super().__init__(config, model_config)
        self.importance: dict[str, Tensor] = {}  # modality -> [D], of the model after the last task

    def build_model(self) -> PODBackbone:
        return PODBackbone(self.model_config, self.config.afc.proxies)

    def loss(
        self, model: nn.Module, out: BackboneOutput, labels: Tensor, teacher_out: BackboneOutput | None
    ) -> dict[str, Tensor]:
        batch, num_classes = out.audio_logits.shape
        check_labels(labels, batch, num_classes)
        settings = self.config.afc
        losses = head_nca_losses(model, out, labels.long(), settings.margin)
        terms = {f"nca_{modality}": loss for modality, loss in losses.items()}
        if teacher_out is None:
            terms["afc"] = out.audio_logits.new_zeros(())
        else:
            if not self.importance:
                raise ValueError("afc: no channel importances from the previous task (they are kept when it ends)")
            factor = settings.weight * math.sqrt(num_classes / self.current_task.task_sizes[-1])
            terms["afc"] = factor * sum(
                (
                    importance_weighted_distillation(
                        getattr(out, f"{modality}_tokens"),
                        getattr(teacher_out, f"{modality}_tokens"),
                        self.importance[modality],
                    )
                    for modality in MODALITIES
                ),
                out.audio_logits.new_zeros(()),
            )
        return {**terms, "total": terms["nca_audio"] + terms["nca_visual"] + terms["afc"]}

    # ----- after a task ---------------------------------------------------------------------------------------

    def end_task(self, model: nn.Module, resources: TaskResources) -> None:
        """Balanced fine-tuning of the heads (t > 0), then the channel importances of the model."""
        task = resources.task
        if task.index > 0 and self.config.afc.finetune_epochs > 0:
            self.balanced_finetune(model, resources)
        self.importance = self.channel_importance(model, resources)

    def training_clips(self, resources: TaskResources) -> list[int]:
        """The clips the task trained on: its own and the old classes' exemplars."""
        num_old = resources.task.num_old_classes
        old = [index for cls in sorted(resources.exemplars) if cls < num_old for index in resources.exemplars[cls]]
        return list(resources.task_indices) + old

    def channel_importance(self, model: nn.Module, resources: TaskResources) -> dict[str, Tensor]:
        """``{modality: I [D]}`` over the task's training clips (each rank sums its shard)."""
        context = resources.context
        sums, count = squared_token_gradients(
            model, resources.batches(rank_shard(self.training_clips(resources), context)), self.config.afc.margin
        )
        if not sums:  # this rank decoded no clip: it adds zeros
            sums = {modality: torch.zeros(self.model_config.dim, device=context.device) for modality in MODALITIES}
        total = resources.all_reduce_sum(torch.tensor([float(count)], dtype=torch.float64, device=context.device))
        for tensor in sums.values():
            resources.all_reduce_sum(tensor)
        if float(total) == 0:
            raise ValueError("afc: none of the task's training clips could be decoded; the importances need some")
        return {modality: normalised_importance(sums[modality].float(), float(total)) for modality in MODALITIES}

    def balanced_finetune(self, model: nn.Module, resources: TaskResources) -> None:
        """Fit both heads' proxies on the memory's frozen features (every rank computes the same)."""
        settings, task = self.config.afc, resources.task
        indices = [index for cls in sorted(resources.exemplars) for index in resources.exemplars[cls]]
        features: dict[str, list[Tensor]] = {modality: [] for modality in MODALITIES}
        labels_seen: list[Tensor] = []
        for out, labels in eval_outputs(model, resources.batches(indices)):
            for modality in MODALITIES:
                features[modality].append(getattr(out, f"{modality}_features"))
            labels_seen.append(labels)
        if not labels_seen:
            raise ValueError("afc: none of the exemplars could be decoded; the balanced fine-tuning needs some")
        inputs = {modality: torch.cat(chunks) for modality, chunks in features.items()}
        labels = torch.cat(labels_seen)
        check_labels(labels, labels.shape[0], task.num_classes)
        heads = {modality: getattr(model, f"{modality}_branch").head for modality in MODALITIES}
        proxies = [heads[modality].weight for modality in MODALITIES]
        optimizer = torch.optim.SGD(
            proxies,
            lr=settings.finetune_lr,
            momentum=FINETUNE_MOMENTUM,
            weight_decay=self.config.optim.weight_decay,
        )
        generator = torch.Generator().manual_seed(self.config.run.seed * 100_003 + task.index)
        for _ in range(settings.finetune_epochs):
            for rows in torch.randperm(labels.shape[0], generator=generator).split(self.config.optim.batch_size):
                rows = rows.to(labels.device)
                loss = sum(
                    (
                        nca_loss(
                            heads[modality](inputs[modality][rows]),
                            labels[rows],
                            heads[modality].scale.detach(),
                            settings.margin,
                        )
                        for modality in MODALITIES
                    ),
                    labels.new_zeros((), dtype=torch.float32),
                )
                optimizer.zero_grad(set_to_none=True)
                for proxy, gradient in zip(proxies, torch.autograd.grad(loss, proxies), strict=True):
                    proxy.grad = gradient
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ----- extra state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "importance": dict(self.importance)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.importance = {modality: tensor.to(device) for modality, tensor in state["importance"].items()}
