"""ClipDataset: audio / image pipeline details, and bad clips skipped and counted (never substituted)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cign_fast.data import (
    ClipDataset,
    SkippedClipWarning,
    SkippedItem,
    SkipReport,
    collate_skipping,
    load_clip_waveform,
    synthetic_class_names,
    write_synthetic_dataset,
)
from cign_fast.data.audio import centre_crop_or_tile
from cign_fast.data.visual import IMAGENET_MEAN, IMAGENET_STD

NAMES = synthetic_class_names(3)


@pytest.fixture()
def small_root(tmp_path: Path) -> Path:
    return write_synthetic_dataset(
        tmp_path / "data", num_classes=3, train_per_class=4, val_per_class=1, test_per_class=1, image_size=32
    )


def _clip(label: str, index: int) -> str:
    return f"{label}_train_{index:04d}"


def _break_clips(root: Path) -> dict[str, str]:
    """Damages five train clips in five ways; returns id -> expected reason."""
    frames, audio = root / "frames", root / "audio"
    (frames / f"{_clip('class_00', 0)}.jpg").write_bytes(b"this is not a jpeg")
    jpeg = (frames / f"{_clip('class_00', 1)}.jpg").read_bytes()
    (frames / f"{_clip('class_00', 1)}.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (audio / f"{_clip('class_01', 0)}.wav").write_bytes(b"RIFF....WAVEgarbage" * 3)
    (audio / f"{_clip('class_01', 1)}.wav").write_bytes(b"")
    soundfile.write(audio / f"{_clip('class_01', 2)}.wav", np.zeros(0, dtype=np.float32), 8000)
    (frames / f"{_clip('class_02', 0)}.jpg").unlink()
    (audio / f"{_clip('class_02', 1)}.wav").unlink()
    return {
        _clip("class_00", 0): "corrupt_image",
        _clip("class_00", 1): "corrupt_image",
        _clip("class_01", 0): "corrupt_audio",
        _clip("class_01", 1): "empty_audio",
        _clip("class_01", 2): "empty_audio",
        _clip("class_02", 0): "missing_visual",
        _clip("class_02", 1): "missing_audio",
    }


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_clips_are_skipped_and_counted(small_root: Path, num_workers: int) -> None:
    expected = _break_clips(small_root)
    with pytest.warns(SkippedClipWarning, match="missing_audio: 1"):
        dataset = ClipDataset(small_root, "train", NAMES, train=True, image_size=32, sample_rate=8000)
    assert len(dataset) == 12 - 2
    assert dataset.skip_report.counts == {"missing_audio": 1, "missing_visual": 1}
    assert _clip("class_02", 0) not in dataset.ids and dataset.targets.count(2) == 2

    report = SkipReport()
    report.merge(dataset.skip_report)
    seen: list[str] = []
    loader = DataLoader(
        dataset,
        batch_size=4,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedClipWarning)
        for _epoch in range(2):
            for batch in loader:
                report.update(batch["skipped"])
                seen.extend(batch["id"])
                if batch["label"].numel() == 0:
                    assert batch["audio"] is None and batch["skipped"]
                    continue
                sizes = {batch["audio"].shape[0], batch["visual"].shape[0], batch["label"].shape[0], len(batch["id"])}
                assert len(sizes) == 1
    good = set(dataset.ids) - set(expected)
    assert sorted(seen) == sorted(list(good) * 2)
    assert report.counts == {
        "corrupt_audio": 1,
        "corrupt_image": 2,
        "empty_audio": 2,
        "missing_audio": 1,
        "missing_visual": 1,
    }
    assert {clip: report.to_dict()["clips"][clip]["reason"] for clip in expected} == expected
    assert "7 clip(s) skipped" in report.summary()


def test_failed_item_warns_and_names_the_file(small_root: Path) -> None:
    _break_clips(small_root)
    with pytest.warns(SkippedClipWarning):
        dataset = ClipDataset(small_root, "train", NAMES, train=False, image_size=32, sample_rate=8000)
    index = dataset.ids.index(_clip("class_01", 0))
    with pytest.warns(SkippedClipWarning, match="corrupt_audio"):
        item = dataset[index]
    assert isinstance(item, SkippedItem)
    assert item.reason == "corrupt_audio" and f"{_clip('class_01', 0)}.wav" in item.detail


def test_batch_of_only_failed_clips(small_root: Path) -> None:
    batch = collate_skipping([SkippedItem("a", "corrupt_audio"), SkippedItem("b", "empty_audio")])
    assert batch["label"].shape == (0,) and batch["id"] == [] and batch["audio"] is None
    assert [item.id for item in batch["skipped"]] == ["a", "b"]


def test_class_without_usable_clip_is_named(small_root: Path) -> None:
    for index in range(4):
        (small_root / "audio" / f"{_clip('class_01', index)}.wav").unlink()
    expected = "'class_01' have no usable clip in split 'train'"
    with pytest.warns(SkippedClipWarning), pytest.raises(ValueError, match=expected):
        ClipDataset(small_root, "train", NAMES, train=True, image_size=32)


def test_class_absent_from_labels_is_named(small_root: Path) -> None:
    with pytest.raises(ValueError, match="'class_09' have no usable clip"):
        ClipDataset(small_root, "val", [*NAMES, "class_09"], train=False, image_size=32)


def test_split_absent_from_labels(small_root: Path) -> None:
    labels = small_root / "labels.csv"
    labels.write_text("\n".join(line for line in labels.read_text().splitlines() if not line.endswith(",val")))
    with pytest.raises(ValueError, match="split 'val'.*splits present: test, train"):
        ClipDataset(small_root, "val", NAMES, train=False, image_size=32)


@pytest.mark.parametrize(
    "argument, kwargs",
    [
        ("split", dict(split="validation")),
        ("class_names", dict(class_names=["a", "a"])),
        ("image_size", dict(image_size=16)),
        ("sample_rate", dict(sample_rate=16000.0)),
    ],
)
def test_bad_arguments(small_root: Path, argument: str, kwargs: dict) -> None:
    options = {"root": small_root, "split": "train", "class_names": NAMES, "train": True, **kwargs}
    with pytest.raises(ValueError, match=argument):
        ClipDataset(**options)


def test_waveform_stereo_resampled_cropped_and_tiled(tmp_path: Path) -> None:
    rate = 22050
    ramp = np.linspace(-1, 1, 5 * rate, dtype=np.float32)
    stereo = np.stack([ramp, np.zeros_like(ramp)], axis=1)
    soundfile.write(tmp_path / "long.wav", stereo, rate, subtype="FLOAT")
    waveform = load_clip_waveform(tmp_path / "long.wav", 16000)
    assert waveform.shape == (48000,)
    # centre 3 s of a 5 s ramp from -1 to 1, averaged with a silent channel: -0.3 .. 0.3
    assert waveform[24000].item() == pytest.approx(0.0, abs=2e-3)
    assert waveform[100].item() == pytest.approx(-0.3, abs=5e-3)
    assert waveform[-100].item() == pytest.approx(0.3, abs=5e-3)

    short = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    soundfile.write(tmp_path / "short.wav", short, 16000, subtype="FLOAT")
    tiled = load_clip_waveform(tmp_path / "short.wav", 16000).numpy()
    assert tiled.shape == (48000,)
    np.testing.assert_array_equal(tiled[:16000], short)
    np.testing.assert_array_equal(tiled[32000:], short)
    assert centre_crop_or_tile(torch.arange(10.0), 4).tolist() == [3.0, 4.0, 5.0, 6.0]


def test_frame_folder_middle_in_eval_random_in_train(small_root: Path) -> None:
    clip = _clip("class_00", 0)
    (small_root / "frames" / f"{clip}.jpg").unlink()
    folder = small_root / "frames" / clip
    folder.mkdir()
    grey_levels = (30, 124, 220)
    for index, level in enumerate(grey_levels):
        Image.new("RGB", (40, 30), (level,) * 3).save(folder / f"{index + 1:06d}.png")
    expected_red = [(level / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0] for level in grey_levels]

    evaluation = ClipDataset(small_root, "train", NAMES, train=False, image_size=32, sample_rate=8000)
    item = evaluation[evaluation.ids.index(clip)]
    assert torch.allclose(item["visual"][0], torch.tensor(expected_red[1]), atol=1e-4)

    training = ClipDataset(small_root, "train", NAMES, train=True, image_size=32, sample_rate=8000)
    index = training.ids.index(clip)
    torch.manual_seed(0)
    chosen = {round(training[index]["visual"][0].mean().item(), 3) for _ in range(12)}
    assert chosen == {round(value, 3) for value in expected_red}

    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.warns(SkippedClipWarning, match="frame folder holds no image"):
        assert training[index].reason == "missing_visual"


def test_file_removed_after_construction_is_skipped(small_root: Path) -> None:
    dataset = ClipDataset(small_root, "train", NAMES, train=False, image_size=32, sample_rate=8000)
    (small_root / "audio" / f"{_clip('class_00', 2)}.wav").unlink()
    (small_root / "frames" / f"{_clip('class_01', 3)}.jpg").unlink()
    with pytest.warns(SkippedClipWarning):
        reasons = [
            dataset[dataset.ids.index(_clip(label, index))].reason
            for label, index in (("class_00", 2), ("class_01", 3))
        ]
    assert reasons == ["missing_audio", "missing_visual"]
