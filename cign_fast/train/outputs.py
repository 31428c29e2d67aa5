"""What a run writes into its output directory (rank 0 only).

* ``config.yaml``: the effective configuration;
* ``epochs.csv``: one row per epoch (the total loss and the method's named terms, learning rate, wall time, samples/s);
* ``accuracy.csv``: one row per (modality, step): ``A_t`` both ways and the row ``a[t][*]``;
* ``metrics.json``: the foundation schema (see :func:`cign_fast.metrics.metrics_summary`), rewritten after every task;
* ``accuracy_matrices.png``, ``accuracy_steps.png`` (``run.plots``); ``tensorboard/`` event files.

The CSV files are rewritten from the run's history (kept in the checkpoints), so a resumed run never
duplicates rows; TensorBoard events past the resume point are purged.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from cign_fast.files import write_atomically
from cign_fast.metrics import MODALITIES, MetricsSummary
from cign_fast.plots import plot_accuracy_matrices, plot_step_accuracy


class RunSummary(MetricsSummary):
    """metrics.json: the metrics, the class names of each task and the split they were measured on."""

    class_tasks: list[list[str]]
    eval_split: str


def epoch_columns(loss_terms: Sequence[str]) -> tuple[str, ...]:
    """The columns of ``epochs.csv`` for a method whose loss has the named ``loss_terms``."""
    return ("task", "epoch", "loss", *loss_terms, "lr", "samples", "seconds", "samples_per_second")


class RunWriter:
    """Writes the run's files; every method is a no-op when ``enabled`` is false (ranks other than 0)."""

    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        tensorboard: bool,
        purge_step: int | None,
        loss_terms: Sequence[str],
        plots: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.loss_terms = tuple(loss_terms)
        self.plots = plots
        self.board = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge_step)

    def epoch(self, history: list[dict[str, float]], global_epoch: int) -> None:
        """Rewrite ``epochs.csv`` and log the newest epoch to TensorBoard at step ``global_epoch``."""
        if not self.enabled:
            return
        write_csv(self.out_dir / "epochs.csv", epoch_columns(self.loss_terms), history)
        if self.board is not None:
            for key in ("loss", *self.loss_terms, "lr", "samples_per_second"):
                self.board.add_scalar(f"train/{key}", history[-1][key], global_epoch)
            self.board.flush()

    def task(self, summary: RunSummary, num_tasks: int, global_epoch: int, board: bool = True) -> None:
        """After a task's evaluation: metrics.json, accuracy.csv, the plots (``plots``) and (``board``) TensorBoard
        scalars."""
        if not self.enabled:
            return
        text = json.dumps(summary, indent=2) + "\n"
        write_atomically(self.out_dir / "metrics.json", text.encode())
        write_csv(self.out_dir / "accuracy.csv", accuracy_columns(num_tasks), accuracy_rows(summary))
        if self.plots:
            plot_accuracy_matrices(summary, self.out_dir / "accuracy_matrices.png", num_tasks)
            plot_step_accuracy(summary, self.out_dir / "accuracy_steps.png")
        if board and self.board is not None:
            for modality in MODALITIES:
                block = summary[modality]
                self.board.add_scalar(
                    f"eval/{modality}/accuracy_after_step", block["accuracy_after_step"][-1], global_epoch
                )
                for key in ("avg_incremental_accuracy", "forgetting", "bwt"):
                    self.board.add_scalar(f"eval/{modality}/{key}", block[key], global_epoch)
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def accuracy_columns(num_tasks: int) -> tuple[str, ...]:
    return (
        "modality",
        "after_task",
        "accuracy_after_step",
        "mean_task_accuracy_after_step",
        *(f"task{i}" for i in range(num_tasks)),
    )


def accuracy_rows(summary: MetricsSummary) -> list[dict[str, object]]:
    rows = []
    for modality in MODALITIES:
        block = summary[modality]
        for step, row in enumerate(block["matrix"]):
            record: dict[str, object] = {
                "modality": modality,
                "after_task": step,
                "accuracy_after_step": block["accuracy_after_step"][step],
                "mean_task_accuracy_after_step": block["mean_task_accuracy_after_step"][step],
            }
            record.update({f"task{i}": value for i, value in enumerate(row) if value is not None})
            rows.append(record)
    return rows


def write_csv(path: Path, columns: tuple[str, ...], rows: Sequence[Mapping[str, object]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue().encode())
