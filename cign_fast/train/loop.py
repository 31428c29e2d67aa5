"""The class-incremental training loop shared by ``cign-fast demo``, ``cign-fast train`` and ``cign-fast compare``.

The loop is the same for every method of :mod:`cign_fast.methods` (``config.method``); the method only
answers its questions (see :mod:`cign_fast.methods.base`). Per task t: ``begin_task`` (the method keeps
what it needs of the old model and grows it by the task's classes), train ``optim.epochs`` epochs on the
method's ``train_indices`` (default: the task's clips plus the exemplar memory; checkpoint after every
epoch), update the memory (``select_exemplars``), ``end_task`` (e.g. a Fisher, class means), evaluate on
the test clips of tasks 0..t with the method's ``predict`` (a row of the accuracy matrix), checkpoint,
and write metrics.json, the CSV files, the plots and TensorBoard scalars.

Single process, or DDP under torchrun (gloo on CPU, NCCL on GPU): the global batch is split evenly
over the ranks, only rank 0 writes or prints, evaluation counts are summed over the ranks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from cign_fast.data import SkippedItem, SkipReport, collate_skipping
from cign_fast.methods import TaskInfo, TaskResources, build_method
from cign_fast.methods.base import as_float32
from cign_fast.metrics import MODALITIES, Modality, format_summary, metrics_summary
from cign_fast.model import ModelConfig
from cign_fast.model.grouping import set_noise_batch
from cign_fast.train.batchnorm import recalibrate_batchnorm
from cign_fast.train.checkpoint import (
    CHECKPOINT_FORMAT,
    RunCheckpoints,
    capture_rng_state,
    checkpoint_name,
    checkpoint_sequence,
    load_latest_checkpoint,
    restore_rng_state,
)
from cign_fast.train.config import TrainConfig, config_from_dict, save_config
from cign_fast.train.datasets import RunData, dataset_skip_report, load_run_data
from cign_fast.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    per_rank_batch_size,
    setup_distributed,
    teardown_distributed,
)
from cign_fast.train.divergence import CHECK_EVERY_STEPS, DivergenceMonitor
from cign_fast.train.embed import embed_clips
from cign_fast.train.evaluate import TaskAccuracy, autocast_context, eval_loader, evaluate_tasks
from cign_fast.train.fingerprint import settings_differences
from cign_fast.train.memory import ExemplarMemory
from cign_fast.train.outputs import RunSummary, RunWriter
from cign_fast.train.run_folder import RunFolder


@dataclass
class TrainResults:
    """What :func:`train_incremental` returns (on every rank)."""

    summary: RunSummary  # the metrics.json content
    class_tasks: list[list[str]]
    out_dir: Path
    history: list[dict[str, float]]  # one record per epoch
    skips: SkipReport
    seconds: float


class EvaluationRecord(TypedDict):
    """A finished task's :class:`TaskAccuracy` as a checkpoint keeps it."""

    correct: dict[str, list[int]]  # modality -> correct clips per task 0..t
    totals: list[int]  # clips per task 0..t


@dataclass
class RunProgress:
    """Where the run is; saved in every checkpoint."""

    task: int = 0  # task being trained (or just finished, when ``evaluated``)
    epochs_done: int = 0  # epochs of ``task`` completed
    evaluated: bool = False  # ``task`` evaluated and the memory updated
    sequence: int = 0  # number of checkpoints written so far
    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[EvaluationRecord] = field(default_factory=list)  # one per finished task


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch, numpy and python; with ``deterministic`` also force deterministic kernels."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class IncrementalTrainer:
    """Owns the model, method, optimiser, memory and bookkeeping of one run (see the module docstring)."""

    def __init__(
        self, config: TrainConfig, context: DistContext, data: RunData, log: Callable[[str], None] = print
    ) -> None:
        self.config = config
        self.context = context
        self.data = data
        self.log = log if context.is_main else (lambda message: None)
        self.out_dir = config.run.out_path()
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.checkpoints = RunCheckpoints(self.checkpoint_dir, config.run.keep_checkpoints, context.is_main)
        self.batch_size = per_rank_batch_size(config.optim.batch_size, context, "optim.batch_size")
        self.eval_batch_size = per_rank_batch_size(config.optim.eval_batch_size, context, "optim.eval_batch_size")
        self.model_config: ModelConfig = config.model_config(*data.feature_dims)
        self.method = build_method(config, self.model_config)
        self.model: nn.Module = self.method.build_model().to(context.device)
        self.optimizer: torch.optim.Optimizer  # both set by build_optimizer (begin_task, restore)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR
        self.forward_model: nn.Module = self.model  # what a training step calls: model, or its DDP wrapper
        self.memory = ExemplarMemory(
            config.memory.budget, config.memory.selection, config.run.seed, config.memory.per_class
        )
        self.progress = RunProgress()
        self.skips = SkipReport()
        for dataset in data.datasets():
            self.skips.merge(dataset_skip_report(dataset))
        self.num_tasks = len(data.class_tasks)
        self.task_of_class = [t for t, names in enumerate(data.class_tasks) for _ in names]
        self.divergence = DivergenceMonitor(
            ("total", *self.method.loss_terms),
            config.run.divergence_factor,
            context,
            self.num_tasks,
            config.optim.epochs,
            lambda: self.checkpoints.newest,
        )

    # ----- task structure -------------------------------------------------------------------------------------

    def task_info(self, task: int) -> TaskInfo:
        return TaskInfo(task, tuple(len(names) for names in self.data.class_tasks[: task + 1]))

    def train_indices(self, task: int) -> list[int]:
        """The clips the method trains ``task`` on (dataset indices; default: the task's plus the exemplars)."""
        return self.method.train_indices(
            self.task_info(task),
            self.data.train_indices_of_task,
            self.memory.indices(),
            clips_of_class=self.data.train_indices_of_class,
            exemplars={cls: list(kept) for cls, kept in self.memory.exemplars.items()},
        )

    def make_train_loader(self, task: int) -> tuple[DataLoader, DistributedSampler]:
        subset = Subset(self.data.train_set, self.train_indices(task))
        sampler: DistributedSampler = DistributedSampler(
            subset,
            num_replicas=self.context.world_size,
            rank=self.context.rank,
            shuffle=True,
            seed=self.config.run.seed,
            drop_last=False,
        )
        loader = DataLoader(
            subset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate_skipping,
            num_workers=self.config.data.num_workers,
            pin_memory=self.context.device.type == "cuda",
        )
        return loader, sampler

    def begin_task(self, task: int) -> None:
        """The method's ``begin_task`` (old model kept, model grown), fresh optimiser, schedule and DDP wrapper."""
        self.model = self.method.begin_task(self.model, self.task_info(task)).to(self.context.device)
        self.build_optimizer(task)

    def build_optimizer(self, task: int) -> None:
        optim = self.config.optim
        trainable = self.method.trainable_parameters(self.model)
        self.optimizer = torch.optim.Adam(trainable, lr=optim.lr, weight_decay=optim.weight_decay)
        steps_per_epoch = math.ceil(len(self.train_indices(task)) / self.context.world_size / self.batch_size)
        total_steps = steps_per_epoch * optim.epochs
        warmup_steps = round(optim.warmup_epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, optim.schedule)
        )
        set_noise_batch(self.model, self.context.rank, self.context.world_size)  # DistributedSampler's interleaving
        if self.context.is_distributed:
            device_ids = [self.context.device] if self.context.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=device_ids)
        else:
            self.forward_model = self.model

    # ----- training -------------------------------------------------------------------------------------------

    def train_epoch(self, task: int, epoch: int) -> dict[str, float]:
        """One pass over the task's loader; returns the epoch record (losses averaged over all ranks)."""
        config, device = self.config, self.context.device
        loader, sampler = self.make_train_loader(task)
        sampler.set_epoch(task * config.optim.epochs + epoch)
        trainable = self.method.trainable_parameters(self.model)
        loss_keys = ("total", *self.method.loss_terms)
        sums = torch.zeros(len(loss_keys) + 1, dtype=torch.float64, device=device)
        self.forward_model.train()
        show = self.context.is_main and config.run.progress
        bar = tqdm(
            loader,
            desc=f"task {task + 1}/{self.num_tasks} epoch {epoch + 1}/{config.optim.epochs}",
            unit="batch",
            leave=False,
            disable=None if show else True,
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        for step, batch in enumerate(bar):
            self.skips.update(batch["skipped"])
            labels = batch["label"].to(device, non_blocking=True)
            if not self.every_rank_has_clips(labels.numel()):
                continue
            lr = float(self.scheduler.get_last_lr()[0])
            audio, visual = batch["audio"].to(device, non_blocking=True), batch["visual"].to(device, non_blocking=True)
            try:
                losses = self.train_step(audio, visual, labels, trainable)
            except ValueError as error:  # NaN or inf inside the model fails an op's input check
                self.divergence.raise_if_diverged(error, (audio, visual), trainable, task, epoch)
                raise
            self.divergence.observe(task, epoch, step, lr, losses)
            sums += torch.stack(
                [losses[key].detach().double() * labels.numel() for key in loss_keys]
                + [torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)]
            )
            if (step + 1) % CHECK_EVERY_STEPS == 0:
                self.divergence.check(task, epoch)
            if show and step % 5 == 0:
                elapsed = time.perf_counter() - start
                bar.set_postfix(
                    loss=f"{float(sums[0] / sums[-1]):.4f}",
                    clips_per_s=f"{float(sums[-1]) * self.context.world_size / max(elapsed, 1e-9):.1f}",
                )
        self.divergence.check(task, epoch, trainable)
        all_reduce_sum(sums, self.context)
        seconds = time.perf_counter() - start
        bar.close()
        samples = float(sums[-1])
        means = (sums[:-1] / max(samples, 1.0)).tolist()
        mean_losses = {("loss" if key == "total" else key): value for key, value in zip(loss_keys, means, strict=True)}
        record: dict[str, float] = {
            "task": task,
            "epoch": epoch,
            **mean_losses,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "samples": samples,
            "seconds": seconds,
            "samples_per_second": samples / max(seconds, 1e-9),
        }
        terms = ", ".join(f"{key} {record[key]:.4f}" for key in self.method.loss_terms)
        self.log(
            f"task {task + 1}/{self.num_tasks} epoch {epoch + 1}/{config.optim.epochs}: loss {record['loss']:.4f} "
            f"({terms})  {record['samples_per_second']:.1f} clips/s  {seconds:.1f} s"
        )
        return record

    def every_rank_has_clips(self, count: int) -> bool:
        """False when this rank's batch (or, under DDP, any rank's) lost every clip to decoding errors:
        all ranks then skip the step together, so no rank waits for gradients that never come."""
        if not self.context.is_distributed:
            return count > 0
        empty = torch.tensor([int(count == 0)], device=self.context.device)
        return int(all_reduce_sum(empty, self.context)) == 0

    def train_step(
        self, audio: Tensor, visual: Tensor, labels: Tensor, trainable: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """Forward (model and the method's teacher), the method's loss, backward, clipping, Adam step, schedule step."""
        precision = self.config.run.precision
        with autocast_context(self.context.device, precision):
            out = self.forward_model(audio, visual)
            with torch.no_grad():
                teacher_out = self.method.teacher_forward(audio, visual, out)
        losses = self.method.loss(
            self.model, as_float32(out), labels, None if teacher_out is None else as_float32(teacher_out)
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.config.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return losses

    # ----- evaluation and memory ------------------------------------------------------------------------------

    def evaluate(self, task: int) -> TaskAccuracy:
        """Accuracy on the evaluation clips of tasks 0..task."""
        indices = [i for t in range(task + 1) for i in self.data.eval_indices_of_task(t)]
        num_classes = self.task_info(task).num_classes
        return evaluate_tasks(
            self.model,
            self.method.predict,
            self.data.eval_set,
            indices,
            self.task_of_class[:num_classes],
            batch_size=self.eval_batch_size,
            context=self.context,
            precision=self.config.run.precision,
            num_workers=self.config.data.num_workers,
            skips=self.skips,
        )

    def update_memory(self, task: int) -> None:
        """The method's choice of exemplars after ``task`` (rank 0 computes, every rank receives the same)."""
        if not self.memory.enabled:
            return
        exemplars: dict[int, list[int]] = {}  # rank 0's choice replaces it on every rank
        if self.context.is_main:
            candidates = {cls: self.data.train_indices_of_class(cls) for cls in self.data.classes_of_task(task)}
            exemplars = self.method.select_exemplars(self.memory, candidates, self.embed_training_clips)
        self.memory.exemplars = broadcast_from_main(exemplars, self.context)

    def embed_training_clips(self, indices: Sequence[int]) -> tuple[Tensor, list[int]]:
        """The method's embeddings of training clips (evaluation transforms) and the indices that decoded."""
        embeddings, _, kept = embed_clips(
            self.model,
            self.method.embed,
            self.data.train_eval_set,
            indices,
            batch_size=self.eval_batch_size,
            device=self.context.device,
            precision=self.config.run.precision,
            num_workers=self.config.data.num_workers,
            skips=self.skips,
        )
        return embeddings, kept.tolist()

    def training_batches(self, indices: Sequence[int]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(audio, visual, labels)`` on the device for training clips (evaluation transforms, in order)."""
        device = self.context.device
        for batch in eval_loader(self.data.train_eval_set, indices, self.eval_batch_size, self.config.data.num_workers):
            self.skips.update(batch["skipped"])
            if batch["label"].numel():
                yield batch["audio"].to(device), batch["visual"].to(device), batch["label"].to(device)

    def end_task(self, task: int) -> None:
        """The method's ``end_task`` hook, with the task's clips, the memory and ways to run the model."""
        resources = TaskResources(
            task=self.task_info(task),
            task_indices=self.data.train_indices_of_task(task),
            exemplars={cls: list(indices) for cls, indices in self.memory.exemplars.items()},
            context=self.context,
            batches=self.training_batches,
            embed=self.embed_training_clips,
            all_reduce_sum=lambda tensor: all_reduce_sum(tensor, self.context),
        )
        self.method.end_task(self.model, resources)

    def summary(self) -> RunSummary:
        """metrics.json content from the evaluations so far."""
        matrices: dict[Modality, list[list[float]]] = {m: [] for m in MODALITIES}
        for record in self.progress.evaluations:
            accuracy = TaskAccuracy(correct=record["correct"], totals=record["totals"])
            for modality in MODALITIES:
                matrices[modality].append(accuracy.accuracies(modality))
        metrics = metrics_summary(matrices, self.progress.evaluations[-1]["totals"])
        return RunSummary(**metrics, class_tasks=self.data.class_tasks, eval_split=self.config.data.eval_split)

    # ----- checkpoints ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model_config": dataclasses.asdict(self.model_config),
            "class_tasks": self.data.class_tasks,
            "task_sizes": list(self.task_info(self.progress.task).task_sizes),  # the tasks the model has grown by
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "memory": self.memory.state_dict(),
            "progress": dataclasses.asdict(self.progress),
            "skipped": [
                [item_id, info["reason"], info["detail"]] for item_id, info in self.skips.to_dict()["clips"].items()
            ],
            "rng": capture_rng_state(),
        }

    def save_checkpoint(self, epoch: int | None) -> None:
        """Checkpoint after ``epoch`` of the current task (``None``: after its evaluation); rank 0 writes."""
        self.progress.sequence += 1
        if self.context.is_main:
            self.checkpoints.save(checkpoint_name(self.progress.sequence, self.progress.task, epoch), self.state_dict())

    def restore(self, state: dict[str, Any], source: Path) -> None:
        """Rebuild the model, the method's state, optimiser, memory, progress and RNG states from a checkpoint."""
        check_resume_compatible(state, self.config, self.data.class_tasks, source)
        self.progress = RunProgress(**state["progress"])
        self.progress.sequence = max(self.progress.sequence, checkpoint_sequence(source))
        self.model = self.method.rebuild_model(state["task_sizes"], state["model"], self.context.device)
        self.method.load_state_dict(state["method"], self.context.device)
        self.memory.load_state_dict(state["memory"])  # before the optimiser: the schedule counts its clips
        self.build_optimizer(self.progress.task)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skips.update(SkippedItem(item_id, reason, detail) for item_id, reason, detail in state["skipped"])
        restore_rng_state(state["rng"])

    # ----- the run --------------------------------------------------------------------------------------------

    def run(self, resume: bool) -> TrainResults:
        start = time.perf_counter()
        epochs = self.config.optim.epochs
        restored = resume and self.resume_from_latest()
        if self.context.is_main:  # after the resume check: a refused resume keeps the run's own config.yaml
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out_dir / "config.yaml")
        purge_step = self.progress.task * epochs + self.progress.epochs_done if restored else None
        writer = RunWriter(
            self.out_dir,
            self.context.is_main,
            self.config.run.tensorboard,
            purge_step,
            self.method.loss_terms,
            self.config.run.plots,
        )
        if restored and self.progress.evaluated:
            first_task, continue_current = self.progress.task + 1, False
        else:
            first_task, continue_current = self.progress.task, restored
        try:
            for task in range(first_task, self.num_tasks):
                if not (continue_current and task == first_task):
                    self.progress = dataclasses.replace(self.progress, task=task, epochs_done=0, evaluated=False)
                    self.begin_task(task)
                for epoch in range(self.progress.epochs_done, epochs):
                    self.progress.history.append(self.train_epoch(task, epoch))
                    self.progress.epochs_done = epoch + 1
                    writer.epoch(self.progress.history, task * epochs + epoch)
                    if self.config.run.epoch_checkpoints:
                        self.save_checkpoint(epoch + 1)
                self.finish_task(task, writer)
            summary = self.summary()
            if first_task >= self.num_tasks:  # resumed after the last task: its outputs may never have been written
                writer.task(summary, self.num_tasks, self.num_tasks * epochs - 1, board=False)
        finally:
            writer.close()
        seconds = time.perf_counter() - start
        self.log(format_summary(summary))
        self.log(f"skipped clips: {self.skips.summary()}")
        newest = self.checkpoints.newest
        self.log(
            f"wall time {seconds:.1f} s; outputs in {self.out_dir}" + (f"; final checkpoint {newest}" if newest else "")
        )
        barrier(self.context)
        return TrainResults(
            summary=summary,
            class_tasks=self.data.class_tasks,
            out_dir=self.out_dir,
            history=self.progress.history,
            skips=self.skips,
            seconds=seconds,
        )

    def resume_from_latest(self) -> bool:
        """Restore the newest intact checkpoint (damaged ones are reported and skipped); False if none."""
        found = load_latest_checkpoint(self.checkpoint_dir, report=self.log)
        self.checkpoints.adopt(None if found is None else found[1], report=self.log)
        if found is None:
            self.log(f"--resume: no usable checkpoint in {self.checkpoint_dir}; starting from the beginning")
            return False
        state, path = found
        self.restore(state, path)
        self.log(
            f"resumed from {path.name} (task {self.progress.task + 1}, {self.progress.epochs_done} epoch(s) "
            f"done{', evaluated' if self.progress.evaluated else ''})"
        )
        return True

    def finish_task(self, task: int, writer: RunWriter) -> None:
        """Re-estimate BatchNorm statistics (optional), update the memory, the method's ``end_task``, evaluate,
        write the metrics, checkpoint."""
        if self.config.optim.precise_bn_batches:
            recalibrate_batchnorm(
                self.model,
                self.data.train_set,
                self.train_indices(task),
                max_batches=self.config.optim.precise_bn_batches,
                batch_size=self.batch_size,
                context=self.context,
                seed=self.config.run.seed * 1000 + task,
                precision=self.config.run.precision,
                num_workers=self.config.data.num_workers,
            )
        self.update_memory(task)
        self.end_task(task)
        accuracy = self.evaluate(task)
        self.progress.evaluations.append({"correct": accuracy.correct, "totals": accuracy.totals})
        self.progress.evaluated = True
        summary = self.summary()
        row = "  ".join(f"{m} {100 * summary[m]['accuracy_after_step'][-1]:.1f}%" for m in MODALITIES)
        self.log(f"after task {task + 1}/{self.num_tasks}, accuracy on tasks 1..{task + 1}: {row}")
        writer.task(summary, self.num_tasks, (task + 1) * self.config.optim.epochs - 1)
        self.save_checkpoint(None)


def check_resume_compatible(
    state: dict[str, Any], config: TrainConfig, class_tasks: list[list[str]], source: Path
) -> None:
    """A run resumes only with the settings and class sequence it started with (``run.*`` but the seed may differ)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"--resume: checkpoint {source} has format {state.get('format')!r}, this version reads "
            f"format {CHECKPOINT_FORMAT}; start the run again in a new folder"
        )
    differing = settings_differences(state["config"], config.to_dict())
    if differing:
        raise ValueError(
            f"--resume: checkpoint {source} was written with other settings ({'; '.join(differing)}); "
            f"resume with the config saved in {source.parent.parent / 'config.yaml'}"
        )
    if state["class_tasks"] != class_tasks:
        raise ValueError(f"--resume: checkpoint {source} was written for a different class sequence")


def train_incremental(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    context: DistContext | None = None,
) -> TrainResults:
    """Train ``config`` task after task (single process, or one rank of a torchrun job) and write its outputs.

    ``resume``: continue the run in ``run.out``; ``overwrite``: replace it (see ``run_folder``). ``context``: a
    process group already set up (``cign-fast compare`` runs many trainings in one); by default the run sets one
    up from torchrun's environment and tears it down at the end.
    """
    config = config_from_dict(config.to_dict(), source="train_incremental(config)")  # a hand-built one too
    if config.run.out is None:
        raise ValueError("run.out: the output directory is required (--out DIR)")
    own_context = context is None
    context = setup_distributed(config.run.device) if context is None else context
    try:
        with RunFolder(Path(config.run.out), context, resume=resume, overwrite=overwrite, log=log) as folder:
            seed_everything(config.run.seed, config.run.deterministic)
            data = load_run_data(config)
            folder.check_identity(config, data)
            trainer = IncrementalTrainer(config, context, data, log)
            return trainer.run(resume)
    finally:
        if own_context:
            teardown_distributed(context)
