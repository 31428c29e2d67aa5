"""The protocol every continual-learning method implements, and what the trainer hands its hooks.

The trainer (:mod:`cign_fast.train.loop`) owns the epoch loop and the optimisation: data loading,
autocast, the forward pass through the DDP wrapper, ``backward``, gradient clipping, the optimiser
and schedule steps, evaluation, checkpoints. A method only answers questions, per task:

==========================  ================================================================================
``build_model``             the untrained model (no task yet); ``grow_model`` adds a task's classes
``begin_task``              before a task: keep what the method needs of the old model, return the grown model
``trainable_parameters``    what the optimiser updates
``train_indices``           which training clips the task sees (default: the task's clips plus the exemplars);
                            it may hold some back for its own post-task stage (BiC's validation clips)
``teacher_forward``         the frozen old model's output on a batch (run by the loop under autocast, no grad)
``loss``                    the loss of a batch as named terms: ``"total"`` plus ``loss_terms`` (the logged columns)
``select_exemplars``        which exemplars to keep after a task
``end_task``                after a task (and the memory update), before evaluation: e.g. a Fisher, class means,
                            or a small post-task fit on frozen outputs (BiC's bias layer, IL2M's statistics)
``predict``                 class indices per modality (``"audio"``, ``"visual"``, ``"audio_visual"``)
``embed``                   a per-clip embedding (herding, t-SNE)
``state_dict``              the method's extra state (old model, Fisher, class means), checkpointed with the run
==========================  ================================================================================

Hooks get what they need as arguments and return values; none receives the trainer, so no method can
change the trainer's state (its memory, optimiser or data) behind its back. A method changes only
its own state (``self``), which :meth:`ContinualMethod.state_dict` must capture for an exact resume.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from cign_fast.model import ModelConfig

if TYPE_CHECKING:  # the trainer's types; importing them at run time would be circular
    from cign_fast.train.config import TrainConfig
    from cign_fast.train.distributed import DistContext
    from cign_fast.train.memory import ExemplarMemory

MEMORY_USES = ("optional", "required", "none")
# A model's output: a NamedTuple of tensors (``CIGNOutput``, ``BackboneOutput``)
OutputT = TypeVar("OutputT", bound=tuple)
Embed = Callable[[Sequence[int]], tuple[Tensor, Sequence[int]]]


@dataclass(frozen=True)
class TaskInfo:
    """The task being trained: its index t and the classes of tasks 0..t."""

    index: int
    task_sizes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """N: classes of tasks 0..t."""
        return sum(self.task_sizes)

    @property
    def num_old_classes(self) -> int:
        """Classes of tasks 0..t-1 (0 at the first task)."""
        return sum(self.task_sizes[:-1])

    def class_range(self, task: int) -> tuple[int, int]:
        """``(first, stop)`` class indices of task ``task`` (<= t)."""
        first = sum(self.task_sizes[:task])
        return first, first + self.task_sizes[task]


@dataclass(frozen=True)
class TaskResources:
    """What :meth:`ContinualMethod.end_task` may read: the task's clips, the memory, and ways to run the model.

    ``batches(indices)`` yields ``(audio, visual, labels)`` on ``context.device`` from the training split
    with evaluation transforms (no augmentation, fixed order, skipped clips left out); under DDP each
    rank should pass its own shard. ``embed(indices)`` gives ``(embeddings [n, E], decoded indices)``
    through :meth:`ContinualMethod.embed`. ``all_reduce_sum`` sums a tensor over the ranks in place.
    """

    task: TaskInfo
    task_indices: list[int]  # the task's training clips (dataset indices)
    exemplars: dict[int, list[int]]  # the memory after this task's update (class -> indices)
    context: DistContext
    batches: Callable[[Sequence[int]], Iterator[tuple[Tensor, Tensor, Tensor]]]
    embed: Embed
    all_reduce_sum: Callable[[Tensor], Tensor]


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with no gradients anywhere (in place; returned for chaining)."""
    model.zero_grad(set_to_none=True)
    model.requires_grad_(False)
    return model.eval()


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy (the old model of the distillation methods)."""
    return freeze(copy.deepcopy(model))


def rank_shard(indices: Sequence[int], context: DistContext) -> list[int]:
    """This rank's share of ``indices`` (every ``world_size``-th one): for sums the ranks then all-reduce."""
    return list(indices)[context.rank :: context.world_size]


def eval_outputs(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor, Tensor]]) -> Iterator[tuple[Any, Tensor]]:
    """``(float32 output, labels)`` of ``model`` in eval mode without gradients, batch by batch (mode restored)."""
    was_training = model.training
    model.eval()
    try:
        for audio, visual, labels in batches:
            with torch.no_grad():
                out = model(audio, visual)
            yield as_float32(out), labels.long()
    finally:
        model.train(was_training)


def as_float32(out: OutputT) -> OutputT:
    """A model output (a NamedTuple of tensors) in float32: the losses run in float32 under bf16 autocast."""
    return type(out)(*(tensor.float() for tensor in out))


class ContinualMethod(ABC, Generic[OutputT]):
    """Base class of the methods (see the module docstring for the protocol).

    Subclasses set ``name`` (the registry name), ``loss_terms`` (the named terms of :meth:`loss` besides
    ``"total"``), ``memory_use`` (``"optional"``: runs with or without exemplars; ``"required"``: refuses
    to run without; ``"none"``: keeps none), ``config_sections`` (the config sections of its
    hyper-parameters, compared on resume), ``input_modes`` (the ``data.input_mode`` values it runs on; the
    config refuses others) and implement :meth:`build_model`, :meth:`loss`,
    :meth:`predict` and :meth:`embed` for their model's output type ``OutputT``. ``uses_teacher`` (a class
    attribute, or a property where a setting decides) makes :meth:`begin_task` keep a frozen copy of the
    model from before each task t > 0 in ``self.teacher``.
    """

    name: ClassVar[str] = ""
    loss_terms: ClassVar[tuple[str, ...]] = ()
    memory_use: ClassVar[str] = "optional"
    config_sections: ClassVar[tuple[str, ...]] = ()
    input_modes: ClassVar[tuple[str, ...]] = ("raw", "features")

    def __init__(self, config: TrainConfig, model_config: ModelConfig) -> None:
        if not isinstance(model_config, ModelConfig):
            raise TypeError(f"model_config: expected a ModelConfig, got {type(model_config).__name__}")
        self.config = config
        self.model_config = model_config
        self.teacher: nn.Module | None = None
        self.task: TaskInfo | None = None

    @property
    def uses_teacher(self) -> bool:
        return False

    @property
    def current_task(self) -> TaskInfo:
        """The task being trained (set by :meth:`begin_task`)."""
        if self.task is None:
            raise RuntimeError(f"{type(self).__name__}: no task begun yet (call begin_task first)")
        return self.task

    # ----- the model ------------------------------------------------------------------------------------------

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model before its first task."""

    def grow_model(self, model: nn.Module, num_new_classes: int) -> None:
        """Add a task of ``num_new_classes`` classes to ``model`` (in place; old weights kept): its ``add_task``."""
        add_task = getattr(model, "add_task", None)
        if not callable(add_task):
            raise TypeError(
                f"{type(self).__name__}.grow_model: {type(model).__name__} has no add_task(num_new_classes)"
            )
        add_task(num_new_classes)

    def rebuild_model(
        self, task_sizes: Sequence[int], state: dict[str, Tensor], device: torch.device | str = "cpu"
    ) -> nn.Module:
        """:meth:`build_model`, :meth:`grow_model` per task, ``load_state_dict``: how a checkpoint is restored."""
        model = self.build_model()
        for size in task_sizes:
            self.grow_model(model, int(size))
        model.load_state_dict(state)
        return model.to(device)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the optimiser updates (default: every one that requires a gradient)."""
        return [p for p in model.parameters() if p.requires_grad]

    # ----- tasks ----------------------------------------------------------------------------------------------

    def begin_task(self, model: nn.Module, task: TaskInfo) -> nn.Module:
        """Before training ``task``: keep the old model (``uses_teacher``), then return the grown model."""
        self.teacher = frozen_copy(model) if self.uses_teacher and task.index > 0 else None
        self.grow_model(model, task.task_sizes[-1])
        self.task = task
        return model

    def train_indices(
        self,
        task: TaskInfo,
        clips_of_task: Callable[[int], list[int]],
        exemplar_indices: list[int],
        *,
        clips_of_class: Callable[[int], list[int]] | None = None,
        exemplars: Mapping[int, list[int]] | None = None,
    ) -> list[int]:
        """Dataset indices the task trains on (default: task t's clips, then the exemplars).

        ``clips_of_class`` (class -> its training clips) and ``exemplars`` (the memory before the task,
        class -> indices) are there for methods that split the data by class; the result must depend only
        on the arguments and the method's state (the trainer calls this more than once per task)."""
        return clips_of_task(task.index) + exemplar_indices

    def select_exemplars(
        self, memory: ExemplarMemory, candidates_by_class: dict[int, list[int]], embed: Embed | None
    ) -> dict[int, list[int]]:
        """The memory after a task (class -> dataset indices, best first); default: ``memory.selection``."""
        return memory.selected(candidates_by_class, embed)

    def end_task(self, model: nn.Module, resources: TaskResources) -> None:
        """After a task's training and memory update, before its evaluation (default: nothing)."""

    # ----- batches --------------------------------------------------------------------------------------------

    def teacher_forward(self, audio: Tensor, visual: Tensor, out: OutputT | None = None) -> OutputT | None:
        """The old model's output on the batch, or ``None`` without one (the loop runs this without grad).

        ``out``: the model's own output on the batch, where the caller has it (the loop passes it), for a
        teacher that can reuse part of it instead of recomputing it (CIGN's, behind frozen encoders)."""
        return None if self.teacher is None else self.teacher(audio, visual)

    @abstractmethod
    def loss(self, model: nn.Module, out: OutputT, labels: Tensor, teacher_out: OutputT | None) -> dict[str, Tensor]:
        """Scalars ``"total"`` (what is minimised) and every name of ``loss_terms``.

        ``model``: the model being trained (not the DDP wrapper: for penalties on its parameters);
        ``out``, ``teacher_out``: its and the teacher's float32 outputs on the batch; ``labels`` [B].
        """

    @abstractmethod
    def predict(self, out: OutputT) -> dict[str, Tensor]:
        """Class indices [B] (long) for ``"audio"``, ``"visual"`` and ``"audio_visual"``."""

    @abstractmethod
    def embed(self, out: OutputT, labels: Tensor) -> Tensor:
        """[B, E] float32 per-clip embeddings (herding and ``cign-fast embed``)."""

    # ----- extra state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The method's state beyond the model (tensors and plain values, ``weights_only``-loadable)."""
        teacher = None
        if self.teacher is not None:
            teacher = {"task_sizes": list(self.current_task.task_sizes[:-1]), "model": self.teacher.state_dict()}
        task = None if self.task is None else {"index": self.task.index, "task_sizes": list(self.task.task_sizes)}
        return {"task": task, "teacher": teacher}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Inverse of :meth:`state_dict`."""
        task = state["task"]
        self.task = None if task is None else TaskInfo(int(task["index"]), tuple(int(s) for s in task["task_sizes"]))
        teacher = state["teacher"]
        self.teacher = (
            None if teacher is None else freeze(self.rebuild_model(teacher["task_sizes"], teacher["model"], device))
        )
