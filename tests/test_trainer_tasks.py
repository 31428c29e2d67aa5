"""The class sequence of a run: presets, custom splits, class-order files, shuffling."""

import pytest

from cign_fast.data import LabelRow, benchmark_tasks
from cign_fast.train.config import DataConfig
from cign_fast.train.tasks import benchmark_class_tasks, custom_class_tasks

ROWS = [LabelRow(f"clip{i}", label, "train") for i, label in enumerate("c b c a d e b f g".split())]


def test_custom_split_follows_first_appearance():
    tasks = custom_class_tasks(DataConfig(tasks=3), ROWS, seed=0)
    assert tasks == [["c", "b", "a"], ["d", "e"], ["f", "g"]]


def test_class_order_file_and_shuffle(tmp_path):
    order = tmp_path / "order.txt"
    order.write_text("# my order\ng\nf\n\ne\nd\n")
    assert custom_class_tasks(DataConfig(tasks=2, class_order=str(order)), ROWS, seed=0) == [["g", "f"], ["e", "d"]]
    shuffled = [custom_class_tasks(DataConfig(tasks=1, shuffle_classes=True), ROWS, seed=s)[0] for s in (1, 1, 2)]
    assert shuffled[0] == shuffled[1] != shuffled[2]
    assert sorted(shuffled[0]) == sorted("abcdefg")


def test_class_order_naming_an_unknown_class_is_refused(tmp_path):
    order = tmp_path / "order.txt"
    order.write_text("a\nzebra\n")
    with pytest.raises(ValueError, match="zebra"):
        custom_class_tasks(DataConfig(tasks=1, class_order=str(order)), ROWS, seed=0)


def test_too_many_tasks_or_none_is_refused():
    with pytest.raises(ValueError, match="data.tasks"):
        custom_class_tasks(DataConfig(tasks=8), ROWS, seed=0)
    with pytest.raises(ValueError, match="data.tasks"):
        custom_class_tasks(DataConfig(), ROWS, seed=0)


@pytest.mark.parametrize(
    "name, tasks, sizes",
    [("vggsound-instruments", None, [9] * 4), ("vggsound-100", 4, [25] * 4), ("vggsound100", 10, [10] * 10)],
)
def test_presets(name, tasks, sizes):
    canonical = name.replace("vggsound-100", "vggsound100")
    labels = [c for task in benchmark_tasks(canonical, num_tasks=tasks) for c in task]
    rows = [LabelRow(f"clip{i}", label, "train") for i, label in enumerate(labels)]
    resolved = benchmark_class_tasks(DataConfig(benchmark=name, tasks=tasks), rows)
    assert [len(task) for task in resolved] == sizes
    with pytest.raises(ValueError, match="not labels of the dataset"):
        benchmark_class_tasks(DataConfig(benchmark=name, tasks=tasks), rows[1:])


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="data.benchmark.*vggsound-1000"):
        benchmark_class_tasks(DataConfig(benchmark="vggsound-1000"), ROWS)
