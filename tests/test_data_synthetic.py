"""Synthetic dataset: real files, deterministic, read back by ClipDataset, separable as designed."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from cign_fast.data import (
    ClipDataset,
    FeatureDataset,
    read_labels,
    spectrogram_frames,
    synthetic_class_names,
    synthetic_confusable_pairs,
    write_synthetic_dataset,
    write_synthetic_features,
)

NUM_CLASSES = 8


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"),
        num_classes=NUM_CLASSES,
        train_per_class=12,
        val_per_class=2,
        test_per_class=16,
        image_size=32,
        sample_rate=8000,
        seed=3,
    )


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_files_and_label_counts(synthetic_root: Path) -> None:
    rows = read_labels(synthetic_root)
    assert Counter((row.split, row.label) for row in rows) == {
        (split, name): count
        for split, count in (("train", 12), ("val", 2), ("test", 16))
        for name in synthetic_class_names(NUM_CLASSES)
    }
    row = rows[0]
    with Image.open(synthetic_root / "frames" / f"{row.id}.jpg") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    samples, rate = soundfile.read(synthetic_root / "audio" / f"{row.id}.wav")
    assert rate == 8000 and samples.shape == (8000,)
    assert 0.05 < np.abs(samples).max() <= 1.0


def test_deterministic_given_seed(tmp_path: Path) -> None:
    options = dict(num_classes=4, train_per_class=2, val_per_class=1, test_per_class=1, image_size=16)
    first = _digest(write_synthetic_dataset(tmp_path / "a", seed=7, **options))
    assert first == _digest(write_synthetic_dataset(tmp_path / "b", seed=7, **options))
    assert first != _digest(write_synthetic_dataset(tmp_path / "c", seed=8, **options))


def test_clip_does_not_depend_on_other_counts(tmp_path: Path) -> None:
    small = write_synthetic_dataset(
        tmp_path / "small", num_classes=2, train_per_class=1, val_per_class=1, test_per_class=1, image_size=16
    )
    large = write_synthetic_dataset(
        tmp_path / "large", num_classes=2, train_per_class=3, val_per_class=1, test_per_class=2, image_size=16
    )
    for name in ("audio/class_01_test_0000.wav", "frames/class_01_test_0000.jpg"):
        assert (small / name).read_bytes() == (large / name).read_bytes()


def test_read_back_by_clip_dataset(synthetic_root: Path) -> None:
    names = synthetic_class_names(NUM_CLASSES)
    dataset = ClipDataset(synthetic_root, "test", names[2:5], train=False, image_size=48, sample_rate=16000)
    assert len(dataset) == 3 * 16
    assert dataset.targets == [0] * 16 + [1] * 16 + [2] * 16
    item = dataset[20]
    assert item["audio"].shape == (1, 257, spectrogram_frames(16000)) == (1, 257, 202)
    assert item["visual"].shape == (3, 48, 48)
    assert item["audio"].dtype == item["visual"].dtype == torch.float32
    assert item["label"] == 1 and item["id"] == "class_03_test_0004"


def _nearest_centroid_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    classes = np.unique(train_labels)
    centroids = np.stack([train[train_labels == c].mean(0) for c in classes])
    distances = ((test[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((classes[distances.argmin(1)] == test_labels).mean())


def _features(dataset: ClipDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip: time-averaged log spectrum [257], 8x8-pooled pixels [192], label."""
    spectra, pixels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        spectra.append(item["audio"][0].mean(-1).numpy())
        pixels.append(torch.nn.functional.adaptive_avg_pool2d(item["visual"], 8).flatten().numpy())
    return np.stack(spectra), np.stack(pixels), np.asarray(dataset.targets)


def test_each_modality_separable_except_its_confusable_pairs(synthetic_root: Path) -> None:
    names = synthetic_class_names(NUM_CLASSES)
    train = _features(ClipDataset(synthetic_root, "train", names, train=False, image_size=32, sample_rate=8000))
    test = _features(ClipDataset(synthetic_root, "test", names, train=False, image_size=32, sample_rate=8000))
    accuracy = {
        modality: _nearest_centroid_accuracy(train[m], train[2], test[m], test[2])
        for m, modality in enumerate(("audio", "visual"))
    }
    # chance is 1/8; each modality confuses 2 of the 4 pairs, so its ceiling is 75 %.
    for modality in ("audio", "visual"):
        assert 0.6 < accuracy[modality] < 0.9, accuracy

    pairs = synthetic_confusable_pairs(NUM_CLASSES)
    assert pairs == {"visual": [(0, 2), (4, 6)], "audio": [(1, 3), (5, 7)]}
    for confused_in, m_confused, m_clear in (("visual", 1, 0), ("audio", 0, 1)):
        for pair in pairs[confused_in]:
            train_mask, test_mask = np.isin(train[2], pair), np.isin(test[2], pair)
            pair_accuracy = [
                _nearest_centroid_accuracy(
                    train[m][train_mask], train[2][train_mask], test[m][test_mask], test[2][test_mask]
                )
                for m in (m_confused, m_clear)
            ]
            assert pair_accuracy[0] < 0.8, (confused_in, pair, pair_accuracy)
            assert pair_accuracy[1] > 0.95, (confused_in, pair, pair_accuracy)


@pytest.mark.parametrize(
    "num_classes, expected",
    [
        (2, {"visual": [], "audio": []}),
        (3, {"visual": [(0, 2)], "audio": []}),
        (6, {"visual": [(0, 2)], "audio": [(1, 3)]}),
        (7, {"visual": [(0, 2), (4, 6)], "audio": [(1, 3)]}),
    ],
)
def test_confusable_pairs_of_a_partial_block(num_classes: int, expected: dict) -> None:
    assert synthetic_confusable_pairs(num_classes) == expected


def test_confusable_partners_fall_in_different_tasks_of_two() -> None:
    for pairs in synthetic_confusable_pairs(16).values():
        assert all(first // 2 != second // 2 for first, second in pairs)


@pytest.mark.parametrize(
    "argument, value", [("num_classes", 1), ("train_per_class", 0), ("image_size", 4), ("sample_rate", 100)]
)
def test_bad_arguments_are_refused(tmp_path: Path, argument: str, value: int) -> None:
    with pytest.raises(ValueError, match=argument):
        write_synthetic_dataset(tmp_path, **{argument: value})


def test_features_twin_shares_the_patterns_of_the_confusable_pairs(tmp_path: Path) -> None:
    root = write_synthetic_features(tmp_path, num_classes=8, train_per_class=40, noise=0.5, seed=3)
    names = synthetic_class_names(8)
    train = FeatureDataset(root, "train", names)
    assert len(train) == 8 * 40 and Counter(train.targets) == dict.fromkeys(range(8), 40)
    assert train.audio_shape == (4, 8) and train.visual_shape == (3, 6)
    means = {
        modality: torch.stack(
            [torch.stack([item[modality] for item in train if item["label"] == c]).mean(0) for c in range(8)]
        )
        for modality in ("audio", "visual")
    }
    distance = {m: torch.cdist(means[m].flatten(1), means[m].flatten(1)) for m in means}
    pairs = synthetic_confusable_pairs(8)
    for modality, shared in pairs.items():
        for first, second in shared:  # one pattern: the means differ by noise only, about 0.11 per entry
            assert distance[modality][first, second] < 1.0, (modality, first, second)
        other = "audio" if modality == "visual" else "visual"
        for first, second in shared:  # the other modality tells the pair apart
            assert distance[other][first, second] > 3.0, (other, first, second)
    assert len(read_labels(root)) == 8 * (40 + 1 + 10)  # train, val, test


def test_features_twin_is_deterministic_and_checks_its_arguments(tmp_path: Path) -> None:
    first = write_synthetic_features(tmp_path / "a", seed=1)
    second = write_synthetic_features(tmp_path / "b", seed=1)
    for name in ("audio_pretrained_feature/audio_pretrained_feature_dict.npy", "labels.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    with pytest.raises(ValueError, match="noise"):
        write_synthetic_features(tmp_path / "c", noise=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        write_synthetic_features(tmp_path / "d", num_classes=1)
