"""PNG plots: accuracy-matrix heatmaps, accuracy after each step, t-SNE of class embeddings (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cign_fast.metrics import MODALITIES, MetricsSummary, Modality, StepCurve, padded_matrix  # noqa: E402

TITLES = {"audio": "audio", "visual": "visual", "audio_visual": "audio-visual"}


def plot_accuracy_matrices(summary: MetricsSummary, path: Path, num_tasks: int | None = None) -> Path:
    """One heatmap per modality of ``a[t][i]`` in percent (row: after task t, column: task i)."""
    figure, axes = plt.subplots(1, len(MODALITIES), figsize=(4.2 * len(MODALITIES), 3.8), constrained_layout=True)
    for axis, modality in zip(axes, MODALITIES, strict=True):
        rows = padded_matrix(summary[modality]["matrix"], num_tasks)
        values = np.array([[np.nan if v is None else 100 * v for v in row] for row in rows], dtype=float)
        image = axis.imshow(values, vmin=0, vmax=100, cmap="viridis")
        for (t, i), value in np.ndenumerate(values):
            if not np.isnan(value):
                axis.text(
                    i, t, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black", fontsize=8
                )
        axis.set_title(TITLES[modality])
        axis.set_xlabel("evaluated on task i")
        axis.set_ylabel("after training task t")
        axis.set_xticks(range(values.shape[1]))
        axis.set_yticks(range(values.shape[0]))
    figure.colorbar(image, ax=axes, shrink=0.8, label="accuracy (%)")
    return _save(figure, path)


def plot_step_accuracy(summary: MetricsSummary, path: Path) -> Path:
    """Accuracy over all classes seen (clip-weighted ``A_t``) after each step, one line per modality."""
    figure, axis = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    for modality in MODALITIES:
        steps = summary[modality]["accuracy_after_step"]
        axis.plot(range(len(steps)), [100 * v for v in steps], marker="o", label=TITLES[modality])
    axis.set_xticks(range(len(summary["audio"]["accuracy_after_step"])))
    axis.set_xlabel("after training task t")
    axis.set_ylabel("accuracy on tasks 0..t (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend()
    return _save(figure, path)


def plot_embedding(
    points: np.ndarray, labels: Sequence[int], class_names: Sequence[str], path: Path, title: str
) -> Path:
    """Scatter of 2-D ``points`` [n, 2] coloured by class."""
    figure, axis = plt.subplots(figsize=(7, 6), constrained_layout=True)
    label_array = np.asarray(labels)
    colours = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for index, name in enumerate(class_names):
        chosen = label_array == index
        if chosen.any():
            axis.scatter(points[chosen, 0], points[chosen, 1], s=12, color=colours(index % colours.N), label=name)
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    if len(class_names) <= 20:
        axis.legend(fontsize=7, markerscale=1.5, loc="best")
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_method_curves(curves: dict[str, dict[Modality, StepCurve]], path: Path, title: str) -> Path:
    """Accuracy after each step per method, one panel per modality: ``curves[method][modality]`` holds
    ``"mean"`` and ``"std"`` lists (fractions); the band is mean +- std over the seeds."""
    figure, axes = plt.subplots(
        1, len(MODALITIES), figsize=(4.6 * len(MODALITIES), 4), constrained_layout=True, sharey=True
    )
    colours = plt.get_cmap("tab10")
    for axis, modality in zip(axes, MODALITIES, strict=True):
        for index, (method, by_modality) in enumerate(curves.items()):
            mean = 100 * np.asarray(by_modality[modality]["mean"], dtype=float)
            std = 100 * np.asarray(by_modality[modality]["std"], dtype=float)
            steps = np.arange(len(mean))
            colour = colours(index % colours.N)
            axis.plot(steps, mean, marker="o", color=colour, label=method)
            axis.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        axis.set_title(TITLES[modality])
        axis.set_xlabel("after training task t")
        axis.set_xticks(range(max(len(c[modality]["mean"]) for c in curves.values())))
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy on tasks 0..t (%)")
    axes[-1].legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)
