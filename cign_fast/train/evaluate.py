"""Evaluation: per-task accuracy of a method's audio, visual and audio-visual predictions, reduced across ranks.

Evaluation loaders get their own fixed ``torch.Generator`` so they consume nothing from torch's
default generator: an evaluation in the middle of a run does not change the Gumbel seeds and data
order that follow, which keeps a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cign_fast.data import SkippedItem, SkipReport, collate_skipping
from cign_fast.methods import ContinualMethod
from cign_fast.metrics import MODALITIES
from cign_fast.train.checkpoint import load_trained_model
from cign_fast.train.config import config_from_dict
from cign_fast.train.datasets import RunDataset, make_dataset
from cign_fast.train.distributed import DistContext, all_reduce_sum, resolve_device


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``precision`` is "bf16" (or "auto" on CUDA); a no-op otherwise."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class IndexedSubset(Dataset):
    """``dataset`` restricted to ``indices``; each decoded item also carries its ``"index"`` in ``dataset``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, object] | SkippedItem:
        index = self.indices[position]
        item = self.dataset[index]
        return item if isinstance(item, SkippedItem) else {**item, "index": index}


def eval_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, num_workers: int) -> DataLoader:
    """In-order loader over ``indices`` of ``dataset`` that leaves torch's default generator untouched."""
    return DataLoader(
        IndexedSubset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(0),
    )


@torch.no_grad()
def run_inference(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str,
    skips: SkipReport | None = None,
) -> Iterator[tuple[NamedTuple, Tensor, Tensor]]:
    """``(model output, labels [B], dataset indices [B])`` per non-empty batch, the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            if skips is not None:
                skips.update(batch["skipped"])
            if batch["label"].numel() == 0:
                continue
            with autocast_context(device, precision):
                out = model(batch["audio"].to(device, non_blocking=True), batch["visual"].to(device, non_blocking=True))
            yield out, batch["label"].to(device), batch["index"]
    finally:
        model.train(was_training)


@dataclass
class TaskAccuracy:
    """Correct predictions per modality and task, and the number of clips evaluated per task."""

    correct: dict[str, list[int]]
    totals: list[int]

    def accuracies(self, modality: str) -> list[float]:
        """Accuracy on each task's test set (a row of the accuracy matrix)."""
        return [c / n if n else 0.0 for c, n in zip(self.correct[modality], self.totals, strict=True)]


def evaluate_tasks(
    model: nn.Module,
    predict: Callable[[NamedTuple], dict[str, Tensor]],
    dataset: Dataset,
    indices: Sequence[int],
    task_of_class: Sequence[int],
    *,
    batch_size: int,
    context: DistContext,
    precision: str = "auto",
    num_workers: int = 0,
    skips: SkipReport | None = None,
) -> TaskAccuracy:
    """Accuracy on each task's clips; every rank evaluates a disjoint shard and the counts are summed.

    ``predict``: model output -> class indices [B] per modality (the method's ``predict``);
    ``indices``: the clips of ``dataset`` to evaluate (labels are global class indices);
    ``task_of_class[c]``: the task that class c belongs to; ``batch_size`` is per rank.
    """
    task_lookup = torch.tensor(list(task_of_class), dtype=torch.long, device=context.device)
    num_tasks = int(task_lookup.max()) + 1
    counts = torch.zeros(len(MODALITIES) + 1, num_tasks, dtype=torch.float64, device=context.device)
    loader = eval_loader(dataset, list(indices)[context.rank :: context.world_size], batch_size, num_workers)
    for out, labels, _ in run_inference(model, loader, context.device, precision, skips):
        task_onehot = nn.functional.one_hot(task_lookup[labels], num_tasks)  # [B, T]
        predictions = predict(out)
        hits = torch.stack([predictions[m] == labels for m in MODALITIES] + [torch.ones_like(labels, dtype=torch.bool)])
        counts += hits.double() @ task_onehot.double()  # [modalities + 1, T]; float: CUDA has no integer matmul
    all_reduce_sum(counts, context)
    rows = counts.round().long().cpu().tolist()
    return TaskAccuracy(correct=dict(zip(MODALITIES, rows[:-1], strict=True)), totals=rows[-1])


@dataclass
class CheckpointData:
    """A trained method and model with the evaluation clips of the classes it has seen."""

    method: ContinualMethod
    model: nn.Module
    dataset: RunDataset
    class_names: list[str]  # classes seen, in class-index order
    task_of_class: list[int]
    state: dict[str, Any]  # the checkpoint


def load_checkpoint_data(
    checkpoint: str | Path, data_root: str | Path, split: str, device: torch.device
) -> CheckpointData:
    """The checkpoint's method and model, and the ``split`` dataset of ``data_root`` over the classes it has seen."""
    method, model, state = load_trained_model(checkpoint, device)
    config = config_from_dict(state["config"])
    seen_tasks = state["class_tasks"][: len(state["task_sizes"])]
    names = [name for task in seen_tasks for name in task]
    root = Path(data_root)
    if not root.exists():
        raise FileNotFoundError(f"--data: no such dataset folder {root}")
    dataset = make_dataset(config.data, root, split, names, train=False)
    task_of_class = [t for t, task in enumerate(seen_tasks) for _ in task]
    return CheckpointData(method, model, dataset, names, task_of_class, state)


class ModalityAccuracy(TypedDict):
    """One modality's accuracy (fractions) on each seen task's clips and on all of them."""

    per_task: list[float]  # [T]
    overall: float


class CheckpointEvaluation(TypedDict):
    """What ``cign-fast eval`` prints (and writes with ``--json``)."""

    checkpoint: str
    method: str
    split: str
    tasks_seen: int
    task_sizes: list[int]  # clips per seen task [T]
    audio: ModalityAccuracy
    visual: ModalityAccuracy
    audio_visual: ModalityAccuracy
    skipped: dict[str, Any]  # SkipReport.to_dict()


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    split: str = "test",
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
) -> CheckpointEvaluation:
    """Accuracy of a checkpoint on each seen task's ``split`` clips and on all of them, per modality."""
    context = DistContext(rank=0, world_size=1, local_rank=0, device=resolve_device(device, 0))
    loaded = load_checkpoint_data(checkpoint, data_root, split, context.device)
    skips = SkipReport()
    skips.merge(getattr(loaded.dataset, "skip_report", None) or SkipReport())
    accuracy = evaluate_tasks(
        loaded.model,
        loaded.method.predict,
        loaded.dataset,
        range(len(loaded.dataset)),
        loaded.task_of_class,
        batch_size=batch_size,
        context=context,
        num_workers=num_workers,
        skips=skips,
    )
    total = sum(accuracy.totals)

    def modality(name: str) -> ModalityAccuracy:
        return ModalityAccuracy(per_task=accuracy.accuracies(name), overall=sum(accuracy.correct[name]) / max(total, 1))

    return CheckpointEvaluation(
        checkpoint=str(checkpoint),
        method=loaded.method.name,
        split=split,
        tasks_seen=len(accuracy.totals),
        task_sizes=accuracy.totals,
        audio=modality("audio"),
        visual=modality("visual"),
        audio_visual=modality("audio_visual"),
        skipped=skips.to_dict(),
    )


def format_evaluation(result: CheckpointEvaluation) -> str:
    lines = [
        f"{result['checkpoint']} ({result['method']}) on the {result['split']} split of the "
        f"{result['tasks_seen']} task(s) seen ({sum(result['task_sizes'])} clips)"
    ]
    for modality in MODALITIES:
        per_task = "  ".join(f"{100 * a:5.1f}" for a in result[modality]["per_task"])
        lines.append(f"  {modality:<13s} overall {100 * result[modality]['overall']:5.1f}%   per task: {per_task}")
    return "\n".join(lines)
