"""The class sequence of a run: a benchmark preset, or the dataset's own labels split into T tasks.

The class lists, splitting and ordering helpers are :mod:`cign_fast.data.benchmarks`'; this module
maps the ``data`` config section onto them and checks the classes against the dataset's labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from cign_fast.data.benchmarks import (
    BENCHMARK_NAMES,
    benchmark_tasks,
    class_order_from_file,
    class_order_of_first_appearance,
    shuffled_class_order,
    split_classes,
)
from cign_fast.data.labels import LabelRow
from cign_fast.train.config import DataConfig

# other spellings of the preset names, mapped to cign_fast.data.benchmarks' names
BENCHMARK_ALIASES = {"vggsound-100": "vggsound100", "vggsound_100": "vggsound100", "vggss": "vgg-ss"}


def check_known_classes(classes: Sequence[str], rows: Sequence[LabelRow], source: str) -> None:
    """Every class must be a label of the dataset; the message names the missing ones (first five)."""
    known = {row.label for row in rows}
    missing = [name for name in classes if name not in known]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{source}: {len(missing)} class(es) are not labels of the dataset: {shown}")


def custom_class_tasks(data: DataConfig, rows: Sequence[LabelRow], seed: int) -> list[list[str]]:
    """The dataset's classes (first appearance, ``class_order`` file, or shuffled with ``seed``) split into
    ``data.tasks`` tasks."""
    if data.tasks is None:
        raise ValueError("data.tasks: a custom benchmark (no data.benchmark) needs the number of tasks, e.g. --tasks 4")
    if data.class_order is not None:
        classes = class_order_from_file(data.class_order)
        check_known_classes(classes, rows, f"data.class_order {data.class_order}")
    else:
        classes = class_order_of_first_appearance(rows)
    if data.shuffle_classes:
        classes = shuffled_class_order(classes, seed)
    if data.tasks > len(classes):
        raise ValueError(f"data.tasks: expected at most the {len(classes)} classes, got {data.tasks}")
    return split_classes(classes, data.tasks)


def benchmark_class_tasks(data: DataConfig, rows: Sequence[LabelRow]) -> list[list[str]]:
    """A preset's class sequence (``vgg-ss`` reads its 220-class list from ``data.class_order``)."""
    if data.benchmark is None:
        raise ValueError(f"data.benchmark: expected one of {', '.join(BENCHMARK_NAMES)}, got none")
    name = BENCHMARK_ALIASES.get(data.benchmark, data.benchmark)
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"data.benchmark: expected one of {', '.join(BENCHMARK_NAMES)}, got {data.benchmark!r}")
    if data.shuffle_classes:
        raise ValueError("data.shuffle_classes: a benchmark preset has a fixed class order; drop one of the two")
    try:
        tasks = benchmark_tasks(name, num_tasks=data.tasks, class_list=data.class_order if name == "vgg-ss" else None)
    except ValueError as err:
        raise ValueError(f"data.benchmark {name!r}: {err}") from None
    if data.class_order is not None and name != "vgg-ss":
        raise ValueError(
            f"data.class_order: benchmark {name!r} has a fixed class order; only 'vgg-ss' reads a class list"
        )
    check_known_classes([c for task in tasks for c in task], rows, f"data.benchmark {name!r}")
    return tasks
