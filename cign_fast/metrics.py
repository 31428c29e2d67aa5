"""Class-incremental metrics on the accuracy matrix ``a[t][i]`` (accuracy on task i's test set after task t).

A matrix is a list of rows; row ``t`` holds the accuracies on tasks ``0..t`` (entries for ``i > t`` are
absent, or ``None`` once padded for JSON). Accuracies are fractions in [0, 1].

* ``A_t`` (clip-weighted): accuracy over all test clips of tasks ``0..t`` =
  ``sum_i a[t][i] * n_i / sum_i n_i`` with ``n_i`` the size of task i's test set.
* ``A_t`` (task-mean): the unweighted mean of ``a[t][0..t]``.
* average incremental accuracy = mean over t of ``A_t``; last accuracy = ``A_{T-1}``.
* forgetting (Chaudhry et al.) = mean over ``i < T-1`` of ``max_{l < T-1} a[l][i] - a[T-1][i]``.
* BWT = mean over ``i < T-1`` of ``a[T-1][i] - a[i][i]``.

Forgetting and BWT are 0 for a single task (nothing to forget).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, TypedDict

Modality = Literal["audio", "visual", "audio_visual"]
MODALITIES: tuple[Modality, ...] = ("audio", "visual", "audio_visual")
STEP_ACCURACY_DEFINITIONS = {
    "accuracy_after_step": "A_t = accuracy over all test clips of tasks 0..t (clip-weighted); "
    "avg_incremental_accuracy and last_accuracy use it",
    "mean_task_accuracy_after_step": "A_t = unweighted mean of a[t][0..t] over the tasks seen",
}

Matrix = Sequence[Sequence[float | None]]


class ModalityMetrics(TypedDict):
    """One modality's block of metrics.json (fractions in [0, 1]; T tasks trained so far)."""

    matrix: list[list[float | None]]  # a[t][i], [T, T], None above the diagonal
    avg_incremental_accuracy: float
    last_accuracy: float
    forgetting: float
    bwt: float
    accuracy_after_step: list[float]  # clip-weighted A_t, [T]
    mean_task_accuracy_after_step: list[float]  # task-mean A_t, [T]
    avg_incremental_mean_task_accuracy: float


class MetricsSummary(TypedDict):
    """The metrics of a run: one block per modality, the test-set size of each task, the definitions of A_t."""

    audio: ModalityMetrics
    visual: ModalityMetrics
    audio_visual: ModalityMetrics
    task_test_sizes: list[int]  # [T]
    definitions: dict[str, str]


class MeanStd(TypedDict):
    """A metric over seeds: mean, sample std (0 for one seed) and the values."""

    mean: float
    std: float
    values: list[float]


class StepCurve(TypedDict):
    """``A_t`` over seeds: mean and std per step, [T] each."""

    mean: list[float]
    std: list[float]


def check_matrix(matrix: Matrix) -> list[list[float]]:
    """The lower-triangular rows of ``matrix`` as floats; row ``t`` must hold at least ``t + 1`` numbers."""
    if len(matrix) == 0:
        raise ValueError("matrix: expected at least one row (one trained task), got none")
    rows = []
    for t, row in enumerate(matrix):
        seen = list(row[: t + 1])
        if len(seen) < t + 1 or any(value is None for value in seen):
            raise ValueError(f"matrix: row {t} must give the accuracy on tasks 0..{t}, got {list(row)!r}")
        rows.append([float(value) for value in seen if value is not None])
    return rows


def accuracy_after_step(matrix: Matrix, task_test_sizes: Sequence[int]) -> list[float]:
    """Clip-weighted ``A_t`` for every step t: accuracy over all test clips of tasks 0..t."""
    rows = check_matrix(matrix)
    if len(task_test_sizes) < len(rows) or any(size <= 0 for size in task_test_sizes[: len(rows)]):
        raise ValueError(
            f"task_test_sizes: expected a positive size for each of the {len(rows)} tasks, "
            f"got {list(task_test_sizes)!r}"
        )
    steps = []
    for t, row in enumerate(rows):
        sizes = task_test_sizes[: t + 1]
        steps.append(sum(acc * size for acc, size in zip(row, sizes, strict=True)) / sum(sizes))
    return steps


def mean_task_accuracy_after_step(matrix: Matrix) -> list[float]:
    """Task-mean ``A_t`` for every step t: the unweighted mean of ``a[t][0..t]``."""
    return [sum(row) / len(row) for row in check_matrix(matrix)]


def average_incremental_accuracy(step_accuracies: Sequence[float]) -> float:
    """Mean over steps of ``A_t``."""
    if len(step_accuracies) == 0:
        raise ValueError("step_accuracies: expected at least one step, got none")
    return sum(step_accuracies) / len(step_accuracies)


def forgetting(matrix: Matrix) -> float:
    """Chaudhry forgetting: mean over old tasks of (best earlier accuracy - final accuracy)."""
    rows = check_matrix(matrix)
    last = len(rows) - 1
    if last == 0:
        return 0.0
    drops = [max(rows[step][i] for step in range(i, last)) - rows[last][i] for i in range(last)]
    return sum(drops) / last


def backward_transfer(matrix: Matrix) -> float:
    """BWT: mean over old tasks of (final accuracy - accuracy right after learning the task)."""
    rows = check_matrix(matrix)
    last = len(rows) - 1
    if last == 0:
        return 0.0
    return sum(rows[last][i] - rows[i][i] for i in range(last)) / last


def padded_matrix(matrix: Matrix, num_tasks: int | None = None) -> list[list[float | None]]:
    """Square ``num_tasks`` x ``num_tasks`` copy (default: one column per row), ``None`` above the diagonal."""
    rows = check_matrix(matrix)
    width = num_tasks if num_tasks is not None else len(rows)
    return [row + [None] * (width - len(row)) for row in rows]


def modality_summary(matrix: Matrix, task_test_sizes: Sequence[int]) -> ModalityMetrics:
    """The metrics.json block of one modality (foundation schema plus extra keys)."""
    steps = accuracy_after_step(matrix, task_test_sizes)
    task_means = mean_task_accuracy_after_step(matrix)
    return ModalityMetrics(
        matrix=padded_matrix(matrix),
        avg_incremental_accuracy=average_incremental_accuracy(steps),
        last_accuracy=steps[-1],
        forgetting=forgetting(matrix),
        bwt=backward_transfer(matrix),
        accuracy_after_step=steps,
        mean_task_accuracy_after_step=task_means,
        avg_incremental_mean_task_accuracy=average_incremental_accuracy(task_means),
    )


def metrics_summary(matrices: Mapping[Modality, Matrix], task_test_sizes: Sequence[int]) -> MetricsSummary:
    """metrics.json content: one block per modality in ``MODALITIES`` plus the definitions of ``A_t``."""
    missing = [name for name in MODALITIES if name not in matrices]
    if missing:
        raise ValueError(f"matrices: expected the modalities {', '.join(MODALITIES)}, missing {', '.join(missing)}")
    return MetricsSummary(
        audio=modality_summary(matrices["audio"], task_test_sizes),
        visual=modality_summary(matrices["visual"], task_test_sizes),
        audio_visual=modality_summary(matrices["audio_visual"], task_test_sizes),
        task_test_sizes=list(task_test_sizes[: len(matrices["audio"])]),
        definitions=dict(STEP_ACCURACY_DEFINITIONS),
    )


def format_matrix(matrix: Matrix, title: str, num_tasks: int | None = None) -> str:
    """A printable table of the matrix in percent; cells above the diagonal are blank."""
    rows = padded_matrix(matrix, num_tasks)
    width = len(rows[0])
    header = "after  " + " ".join(f"task{i:<3d}" for i in range(width))
    lines = [title, header]
    for t, row in enumerate(rows):
        cells = " ".join(f"{100 * v:6.1f} " if v is not None else " " * 7 for v in row)
        lines.append(f"task{t:<3d}" + cells)
    return "\n".join(lines)


def format_summary(summary: MetricsSummary) -> str:
    """Matrices and headline numbers of every modality, as printed by ``demo`` and ``train``."""
    blocks = []
    for name in MODALITIES:
        block = summary[name]
        blocks.append(format_matrix(block["matrix"], f"{name} accuracy (%), row = after training task t"))
        blocks.append(
            f"  {name}: avg incremental {100 * block['avg_incremental_accuracy']:.1f}%  "
            f"last {100 * block['last_accuracy']:.1f}%  forgetting {100 * block['forgetting']:.1f}%  "
            f"BWT {100 * block['bwt']:+.1f}%"
        )
    return "\n".join(blocks)
