"""The datasets of a run and the clip indices of each class and task.

All datasets are built over the whole class sequence (class index = position in the flattened
task list), so a clip's label is its global class index and a task's clips are found through
``dataset.targets`` without decoding anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cign_fast.data import LabelRow, SkipReport, read_labels
from cign_fast.data.cache import MANIFEST_NAME, read_manifest
from cign_fast.data.clips import ClipDataset
from cign_fast.data.features import FeatureDataset
from cign_fast.data.labels import LABELS_FILE_NAMES, SPLITS
from cign_fast.train.config import DataConfig, TrainConfig
from cign_fast.train.tasks import benchmark_class_tasks, custom_class_tasks

# What a run reads: clips (raw mode) or pre-extracted features; both have ``targets`` (class index per item).
RunDataset = ClipDataset | FeatureDataset


@dataclass
class RunData:
    class_tasks: list[list[str]]  # class names of each task, in order
    train_set: RunDataset  # training split, training transforms
    eval_set: RunDataset  # ``data.eval_split``, evaluation transforms
    make_train_eval_set: Callable[[], RunDataset]  # builds the training split with evaluation transforms
    feature_dims: tuple[int | None, int | None]  # (D_a, D_v) in features mode, else (None, None)
    _train_by_class: list[list[int]] = field(init=False, repr=False)
    _eval_by_class: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        num_classes = sum(len(names) for names in self.class_tasks)
        self._train_by_class = indices_by_class(self.train_set.targets, num_classes)
        self._eval_by_class = indices_by_class(self.eval_set.targets, num_classes)

    @cached_property
    def train_eval_set(self) -> RunDataset:
        """The training split with evaluation transforms (herding, a method's end-of-task pass), built on first use."""
        return self.make_train_eval_set()

    def datasets(self) -> list[RunDataset]:
        return [self.train_set, self.eval_set]

    def classes_of_task(self, task: int) -> range:
        first = sum(len(names) for names in self.class_tasks[:task])
        return range(first, first + len(self.class_tasks[task]))

    def train_indices_of_class(self, cls: int) -> list[int]:
        return list(self._train_by_class[cls])

    def train_indices_of_task(self, task: int) -> list[int]:
        return [i for cls in self.classes_of_task(task) for i in self._train_by_class[cls]]

    def eval_indices_of_task(self, task: int) -> list[int]:
        return [i for cls in self.classes_of_task(task) for i in self._eval_by_class[cls]]


def indices_by_class(targets: Sequence[int], num_classes: int) -> list[list[int]]:
    """Dataset positions of each class."""
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, target in enumerate(targets):
        by_class[target].append(index)
    return by_class


def dataset_skip_report(dataset: RunDataset) -> SkipReport:
    """Clips the dataset left out when it was built (an empty report if it keeps none)."""
    return getattr(dataset, "skip_report", None) or SkipReport()


def label_rows(root: Path, input_mode: str) -> list[LabelRow]:
    """The clips and labels of a dataset folder: its labels file, or a feature cache's manifest (splits in
    train, val, test order, so "first appearance" counts the training clips first).

    A features folder in AV-CIL's layout needs a labels file (e.g. VGGSound's ``vggsound.csv``) next to it.
    """
    if input_mode == "features" and not any((root / name).is_file() for name in LABELS_FILE_NAMES):
        if not (root / MANIFEST_NAME).is_file():
            raise FileNotFoundError(
                f"data.root: {root} has no {' or '.join(LABELS_FILE_NAMES)} (needed for the "
                f"class list of features not made by `cign-fast extract`) and no {MANIFEST_NAME}"
            )
        splits = read_manifest(root)["splits"]
        return [
            LabelRow(clip_id, label, split)
            for split in SPLITS
            if split in splits
            for _, shard in sorted(splits[split]["shards"].items(), key=lambda item: int(item[0]))
            for clip_id, label in zip(shard["ids"], shard["labels"], strict=True)
        ]
    return read_labels(root)


def make_dataset(
    data: DataConfig,
    root: Path,
    split: str,
    class_names: Sequence[str],
    train: bool,
    rows: Sequence[LabelRow] | None = None,
) -> RunDataset:
    """A clip or feature dataset (per ``data.input_mode``) of ``split`` over ``class_names``."""
    if data.input_mode == "features":
        return FeatureDataset(root, split, list(class_names))
    return ClipDataset(
        root, split, list(class_names), train, image_size=data.image_size, sample_rate=data.sample_rate, rows=rows
    )


def load_run_data(config: TrainConfig) -> RunData:
    """Resolve the class sequence and build the datasets named by ``config.data``."""
    data = config.data
    root = data.root_path()
    if not root.exists():
        raise FileNotFoundError(f"data.root: no such dataset folder {root}")
    rows = label_rows(root, data.input_mode)
    if data.benchmark is not None:
        class_tasks = benchmark_class_tasks(data, rows)
    else:
        class_tasks = custom_class_tasks(data, rows, config.run.seed)
    names = [name for task in class_tasks for name in task]
    train_set = make_dataset(data, root, "train", names, True, rows)
    eval_set = make_dataset(data, root, data.eval_split, names, False, rows)
    # features have no augmentation: the training set is its own evaluation view
    make_train_eval_set = (
        (lambda: train_set)
        if data.input_mode == "features"
        else (lambda: make_dataset(data, root, "train", names, False, rows))
    )
    widths = train_set.feature_dims if isinstance(train_set, FeatureDataset) else (None, None)
    return RunData(class_tasks, train_set, eval_set, make_train_eval_set, widths)
