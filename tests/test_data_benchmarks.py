"""Benchmark presets and class-order helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cign_fast.data import LabelRow
from cign_fast.data.benchmarks import (
    VGGSOUND100_CLASSES,
    VGGSOUND_INSTRUMENTS_TASKS,
    benchmark_tasks,
    class_order_from_file,
    class_order_of_first_appearance,
    shuffled_class_order,
    split_classes,
    vggsound_label,
)

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared/data/benchmarks"


def test_instruments_preset() -> None:
    tasks = benchmark_tasks("vggsound-instruments", label_style="published")
    assert [len(task) for task in tasks] == [9, 9, 9, 9]
    assert len({name for task in tasks for name in task}) == 36
    assert tasks[0][:2] == ["accordion", "bass_guitar"] and tasks[3][-1] == "ukulele"
    labels = benchmark_tasks("vggsound-instruments")
    assert labels[0][:2] == ["playing accordion", "playing bass guitar"]
    assert "playing violin, fiddle" in labels[1] and "playing steel guitar, slide guitar" in labels[1]
    assert "playing marimba, xylophone" in labels[2]
    with pytest.raises(ValueError, match="run as 4 tasks"):
        benchmark_tasks("vggsound-instruments", num_tasks=3)


def test_vggsound100_presets() -> None:
    ten = benchmark_tasks("vggsound100", label_style="published")
    assert [len(task) for task in ten] == [10] * 10
    assert [name for task in ten for name in task] == list(VGGSOUND100_CLASSES)
    four = benchmark_tasks("vggsound100", num_tasks=4)
    assert [len(task) for task in four] == [25] * 4
    assert four[0][0] == "playing theremin" and four[0][14] == "subway, metro, underground"
    assert four[3][-1] == "typing on typewriter"
    with pytest.raises(ValueError, match="10 or 4 tasks"):
        benchmark_tasks("vggsound100", num_tasks=5)


@pytest.mark.skipif(not SHARED_BENCHMARKS.is_dir(), reason="shared benchmark lists absent (user clone)")
def test_carried_lists_equal_the_shared_files() -> None:
    lines = (SHARED_BENCHMARKS / "vggsound_instruments_tasks.txt").read_text().splitlines()
    published = [tuple(name.strip() for name in line.split(":", 1)[1].split(",")) for line in lines if line.strip()]
    assert tuple(published) == VGGSOUND_INSTRUMENTS_TASKS
    names = [line for line in (SHARED_BENCHMARKS / "vggsound100_classes.txt").read_text().splitlines() if line]
    assert tuple(names) == VGGSOUND100_CLASSES


def test_vgg_ss_needs_its_class_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_list: benchmark 'vgg-ss' needs"):
        benchmark_tasks("vgg-ss")
    path = tmp_path / "vggss_classes.txt"
    path.write_text("# VGG-SS\n" + "".join(f"class {i}\n\n" for i in range(220)))
    assert [len(task) for task in benchmark_tasks("vgg-ss", class_list=path)] == [55] * 4
    tasks = benchmark_tasks("vgg-ss", class_list=path, num_tasks=11)
    assert [len(task) for task in tasks] == [20] * 11 and tasks[1][0] == "class 20"
    path.write_text("".join(f"class {i}\n" for i in range(219)))
    with pytest.raises(ValueError, match="expected 220 VGG-SS classes"):
        benchmark_tasks("vgg-ss", class_list=path)
    with pytest.raises(ValueError, match="only used by benchmark 'vgg-ss'"):
        benchmark_tasks("vggsound100", class_list=path)


def test_unknown_benchmark_and_label_style() -> None:
    with pytest.raises(ValueError, match="benchmark: expected one of"):
        benchmark_tasks("audioset")
    with pytest.raises(ValueError, match="label_style"):
        benchmark_tasks("vggsound100", label_style="short")


def test_split_classes() -> None:
    names = [f"c{i}" for i in range(10)]
    assert split_classes(names, 3) == [names[:4], names[4:7], names[7:]]
    assert split_classes(names, 10) == [[name] for name in names]
    for bad in (0, 11, 2.0):
        with pytest.raises(ValueError, match="num_tasks"):
            split_classes(names, bad)
    with pytest.raises(ValueError, match="duplicates"):
        split_classes(["a", "a"], 1)


def test_class_orders(tmp_path: Path) -> None:
    rows = [
        LabelRow("1", "dog", "test"),
        LabelRow("2", "cat", "train"),
        LabelRow("3", "dog", "train"),
        LabelRow("4", "bird", "train"),
    ]
    assert class_order_of_first_appearance(rows) == ["dog", "cat", "bird"]
    assert class_order_of_first_appearance(rows, split="train") == ["cat", "dog", "bird"]
    names = [f"c{i}" for i in range(20)]
    shuffled = shuffled_class_order(names, seed=1)
    assert sorted(shuffled) == sorted(names) and shuffled != names
    assert shuffled == shuffled_class_order(names, seed=1) != shuffled_class_order(names, seed=2)
    path = tmp_path / "order.txt"
    path.write_text("b\n  a  \n\n# c\nc\n")
    assert class_order_from_file(path) == ["b", "a", "c"]
    path.write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"order.txt:3: class 'a' is listed twice"):
        class_order_from_file(path)
    assert vggsound_label("dog bow-wow") == "dog bow-wow" and vggsound_label("snare_drum") == "playing snare drum"
