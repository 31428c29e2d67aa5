"""A small real-data audio-visual set: spoken digits (FSDD recordings) paired by class with handwritten
digit images (scikit-learn's ``load_digits``), written in the ClipDataset layout.

Audio: the Free Spoken Digit Dataset's ``{digit}_{speaker}_{take}.wav`` files (8 kHz mono), split by the
upstream convention: takes 0-4 are the test pool, takes 5-49 the train / val pool. Images: the 8x8
``load_digits`` images upscaled to ``image_size``; each split draws from its own disjoint image pool.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cign_fast.data.labels import SPLITS
from cign_fast.data.synthetic import check_split_counts

FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<take>\d+)\.wav$")
FSDD_TEST_TAKES = range(0, 5)


def fsdd_class_names() -> list[str]:
    """``["digit_0", ..., "digit_9"]``: the labels :func:`write_fsdd_digits_dataset` writes, in class order."""
    return [f"digit_{digit}" for digit in range(10)]


def _recordings_by_pool(recordings_dir: Path) -> dict[tuple[int, str], list[Path]]:
    """(digit, "test" or "train_val") -> recordings, sorted by name."""
    pools: dict[tuple[int, str], list[Path]] = {}
    for path in sorted(recordings_dir.iterdir()):
        match = FSDD_NAME.match(path.name)
        if match:
            pool = "test" if int(match["take"]) in FSDD_TEST_TAKES else "train_val"
            pools.setdefault((int(match["digit"]), pool), []).append(path)
    return pools


def _digit_image(pixels: np.ndarray, image_size: int) -> Image.Image:
    """An 8x8 ``load_digits`` image (values 0..16) as a dark-on-light RGB image of ``image_size`` pixels."""
    grey = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey).resize((image_size, image_size), Image.Resampling.BICUBIC).convert("RGB")


def write_fsdd_digits_dataset(
    recordings_dir: str | Path,
    root: str | Path,
    *,
    train_per_class: int = 20,
    val_per_class: int = 5,
    test_per_class: int = 10,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Writes ``root/frames/{id}.jpg``, ``root/audio/{id}.wav`` (the FSDD file, copied), ``root/labels.csv``
    (labels from :func:`fsdd_class_names`) and ``root/sources.csv`` (id -> recording, digits image index).

    Clips are drawn at random (``seed``) without repetition from each digit's pool: at most 30 test clips and
    270 train + val clips per digit. Returns ``root``.
    """
    from sklearn.datasets import load_digits

    recordings_dir = Path(recordings_dir)
    if not recordings_dir.is_dir():
        raise FileNotFoundError(f"recordings_dir: {recordings_dir} is not a folder of FSDD recordings")
    counts = check_split_counts(train_per_class, val_per_class, test_per_class, image_size)
    pools = _recordings_by_pool(recordings_dir)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)

    chosen: dict[tuple[int, str], list[Path]] = {}
    for digit in range(10):
        test_pool, train_val_pool = pools.get((digit, "test"), []), pools.get((digit, "train_val"), [])
        if len(test_pool) < test_per_class or len(train_val_pool) < train_per_class + val_per_class:
            raise ValueError(
                f"recordings_dir: {recordings_dir} has {len(test_pool)} test and {len(train_val_pool)} train/val "
                f"recordings of digit {digit}; asked for {test_per_class} and {train_per_class + val_per_class}"
            )
        train_val = [train_val_pool[i] for i in rng.permutation(len(train_val_pool))]
        chosen[(digit, "train")] = train_val[:train_per_class]
        chosen[(digit, "val")] = train_val[train_per_class : train_per_class + val_per_class]
        chosen[(digit, "test")] = [test_pool[i] for i in rng.permutation(len(test_pool))[:test_per_class]]

    labels_rows, source_rows = [], []
    names = fsdd_class_names()
    for digit in range(10):
        images = rng.permutation(np.flatnonzero(digits.target == digit))
        # Disjoint image pools per split, in proportion to the clip counts (images repeat within a pool
        # only when a split asks for more clips than its pool holds).
        bounds = np.cumsum([0] + [counts[s] for s in SPLITS]) * len(images) // sum(counts.values())
        for split_index, split in enumerate(SPLITS):
            pool = images[bounds[split_index] : max(bounds[split_index + 1], bounds[split_index] + 1)]
            for clip_index, recording in enumerate(chosen[(digit, split)]):
                clip_id = f"{names[digit]}_{split}_{clip_index:04d}"
                image_index = int(pool[clip_index % len(pool)])
                _digit_image(digits.images[image_index], image_size).save(
                    root / "frames" / f"{clip_id}.jpg", quality=95
                )
                shutil.copyfile(recording, root / "audio" / f"{clip_id}.wav")
                labels_rows.append((clip_id, names[digit], split))
                source_rows.append((clip_id, recording.name, image_index))
    split_order = {split: i for i, split in enumerate(SPLITS)}
    labels_rows.sort(key=lambda row: (split_order[row[2]], row[1], row[0]))
    for name, header, rows in (
        ("labels.csv", ("id", "label", "split"), labels_rows),
        ("sources.csv", ("id", "recording", "digits_image_index"), source_rows),
    ):
        with (root / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return root
