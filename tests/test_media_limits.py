"""Media outside the documented limits are skipped by name, never fatal: huge or non-finite samples,
sample rates outside the range, oversized images, symlink loops, non-finite decoded or cached inputs."""

from __future__ import annotations

import math
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from cign_fast.data import ClipDataset, SkippedClipWarning, SkippedItem, synthetic_class_names, write_synthetic_dataset
from cign_fast.data.audio import MAX_RESAMPLE_TERMS, load_clip_waveform, resampling_terms
from cign_fast.data.features import AVCIL_AUDIO, FeatureDataset
from cign_fast.train.loop import train_incremental

from helpers import one_thread, tiny_config, write_feature_dataset

NAMES = synthetic_class_names(2)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return write_synthetic_dataset(
        tmp_path / "data",
        num_classes=2,
        train_per_class=3,
        val_per_class=1,
        test_per_class=1,
        image_size=32,
        sample_rate=8000,
    )


def clip_id(index: int) -> str:
    return f"class_00_train_{index:04d}"


def decode(root: Path, index: int) -> dict | SkippedItem:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedClipWarning)
        dataset = ClipDataset(root, "train", NAMES, train=False, image_size=32, sample_rate=8000)
        return dataset[dataset.ids.index(clip_id(index))]


def with_sample_rate(path: Path, rate: int) -> None:
    """Rewrite the sample rate field of a WAV header (the samples stay as they are)."""
    data = bytearray(path.read_bytes())
    field = data.index(b"fmt ") + 12
    data[field : field + 4] = struct.pack("<I", rate)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "write, reason, detail",
    [
        (
            lambda path: soundfile.write(path, np.full(800, 3e38, np.float32), 8000, subtype="FLOAT"),
            "corrupt_audio",
            "magnitude 3e\\+38 exceeds 1000",
        ),
        (
            lambda path: soundfile.write(path, np.r_[np.zeros(799), np.inf].astype(np.float32), 8000, subtype="FLOAT"),
            "corrupt_audio",
            "NaN or inf samples",
        ),
        (lambda path: with_sample_rate(path, 2**31 - 1), "corrupt_audio", "sample rate 2147483647 Hz is outside"),
        (
            lambda path: with_sample_rate(path, 999),
            "corrupt_audio",
            "sample rate 999 Hz is outside the supported 1000..384000 Hz",
        ),
    ],
)
def test_bad_audio_is_skipped_by_name(root: Path, write, reason: str, detail: str) -> None:
    write(root / "audio" / f"{clip_id(1)}.wav")
    item = decode(root, 1)
    assert isinstance(item, SkippedItem) and item.id == clip_id(1) and item.reason == reason
    assert re.search(detail, item.detail), item.detail
    assert not isinstance(decode(root, 0), SkippedItem)


def test_odd_sample_rate_resamples_with_a_small_rational_filter(tmp_path: Path) -> None:
    assert resampling_terms(44100, 16000) == (441, 160) and resampling_terms(48000, 16000) == (3, 1)
    assert resampling_terms(11025, 16000) == (441, 640)
    orig, new = resampling_terms(44101, 16000)
    assert max(orig, new) <= MAX_RESAMPLE_TERMS and abs(new / orig * 44101 / 16000 - 1) < 5e-5
    path = tmp_path / "odd.wav"
    time = np.arange(3 * 44101) / 44101
    soundfile.write(path, (0.5 * np.sin(2 * math.pi * 440 * time)).astype(np.float32), 44101, subtype="FLOAT")
    waveform = load_clip_waveform(path, 16000)
    assert waveform.shape == (48000,)
    spectrum = torch.fft.rfft(waveform[4000:-4000] * torch.hann_window(40000)).abs()
    assert abs(int(spectrum.argmax()) * 16000 / 40000 - 440) <= 0.4  # the tone stays at 440 Hz


def test_oversized_image_is_skipped_before_decoding(root: Path) -> None:
    Image.new("1", (5000, 4000)).save(root / "frames" / f"{clip_id(2)}.png")  # 1 bit per pixel: a small file
    (root / "frames" / f"{clip_id(2)}.jpg").unlink()
    item = decode(root, 2)
    assert isinstance(item, SkippedItem) and item.reason == "corrupt_image"
    assert "5000 x 4000 pixels exceeds the limit of 16777216 pixels" in item.detail


def test_symlink_loops_under_frames_are_not_fatal(root: Path) -> None:
    frames = root / "frames"
    (frames / "stray-loop").symlink_to("stray-loop")  # named by no label
    (frames / f"{clip_id(0)}.jpg").unlink()
    (frames / clip_id(0)).symlink_to(clip_id(0))  # a clip whose frame folder is a loop
    (frames / f"{clip_id(1)}.jpg").unlink()
    (frames / f"{clip_id(1)}.jpg").symlink_to(f"{clip_id(1)}.jpg")  # a clip whose frame file is a loop
    with pytest.warns(SkippedClipWarning):
        dataset = ClipDataset(root, "train", NAMES, train=False, image_size=32, sample_rate=8000)
    assert dataset.skip_report.ids("missing_visual") == [clip_id(0)]
    with pytest.warns(SkippedClipWarning, match=clip_id(1)):
        item = dataset[dataset.ids.index(clip_id(1))]
    assert isinstance(item, SkippedItem) and item.reason == "corrupt_image"


def test_non_finite_features_are_skipped_and_the_run_goes_on(tmp_path: Path) -> None:
    data = write_feature_dataset(tmp_path / "data")
    features = np.load(data / AVCIL_AUDIO, allow_pickle=True).item()
    features["class_0_train_3"][1, 2] = np.inf
    np.save(data / AVCIL_AUDIO, features, allow_pickle=True)
    dataset = FeatureDataset(data, "train", ["class_0"])
    with pytest.warns(SkippedClipWarning, match="class_0_train_3"):
        item = dataset[3]
    assert item == SkippedItem("class_0_train_3", "non_finite_input", "the audio input holds NaN or inf")
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedClipWarning)
        results = train_incremental(
            tiny_config(data, tmp_path / "run", "--tasks", "2", "--epochs", "1"), log=lambda message: None
        )
    assert results.skips.ids("non_finite_input") == ["class_0_train_3"]
