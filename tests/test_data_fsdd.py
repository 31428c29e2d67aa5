"""Real recordings: spoken digits (FSDD) paired with scikit-learn's digit images, loaded by ClipDataset."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
import torch

from cign_fast.data import ClipDataset, read_labels
from cign_fast.data.fsdd import fsdd_class_names, write_fsdd_digits_dataset

RECORDINGS = Path(__file__).resolve().parents[2] / "shared/data/fsdd/recordings"


@pytest.fixture(scope="module")
def fsdd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not RECORDINGS.is_dir():
        pytest.skip(f"FSDD recordings not available at {RECORDINGS} (only in the project's shared folder)")
    return write_fsdd_digits_dataset(
        RECORDINGS,
        tmp_path_factory.mktemp("fsdd"),
        train_per_class=3,
        val_per_class=1,
        test_per_class=2,
        image_size=32,
        seed=0,
    )


def test_layout_and_splits(fsdd_root: Path) -> None:
    rows = read_labels(fsdd_root)
    assert Counter(row.split for row in rows) == {"train": 30, "val": 10, "test": 20}
    assert {row.label for row in rows} == set(fsdd_class_names())
    with (fsdd_root / "sources.csv").open() as handle:
        sources = {row["id"]: row for row in csv.DictReader(handle)}
    for row in rows:
        recording = sources[row.id]["recording"]
        digit, _speaker, take = recording[:-4].split("_")
        assert row.label == f"digit_{digit}"
        assert (int(take) < 5) == (row.split == "test")  # upstream convention: takes 0-4 are the test set
    assert len({source["recording"] for source in sources.values()}) == 60
    images = {
        split: {sources[row.id]["digits_image_index"] for row in rows if row.split == split}
        for split in ("train", "val", "test")
    }
    assert not images["train"] & images["test"] and not images["val"] & images["test"]


def test_loaded_by_clip_dataset(fsdd_root: Path) -> None:
    dataset = ClipDataset(fsdd_root, "test", fsdd_class_names(), train=False, image_size=32, sample_rate=16000)
    assert len(dataset) == 20 and dataset.targets == [d for d in range(10) for _ in range(2)]
    item = dataset[5]
    assert item["audio"].shape == (1, 257, 202) and item["visual"].shape == (3, 32, 32)
    assert torch.isfinite(item["audio"]).all() and item["audio"].std() > 0.05
    assert item["label"] == 2 and len(dataset.skip_report) == 0


def test_deterministic_and_refuses_too_many(fsdd_root: Path, tmp_path: Path) -> None:
    again = write_fsdd_digits_dataset(
        RECORDINGS, tmp_path / "again", train_per_class=3, val_per_class=1, test_per_class=2, image_size=32, seed=0
    )
    assert (again / "sources.csv").read_text() == (fsdd_root / "sources.csv").read_text()
    with pytest.raises(ValueError, match="asked for 31"):
        write_fsdd_digits_dataset(RECORDINGS, tmp_path / "big", test_per_class=31)
