"""Fixed signal features (``write_signal_features``): pooled spectrogram and frame patches of a clip dataset, in
AV-CIL's layout, standardised with the train split's statistics, read back by FeatureDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cign_fast.data import FeatureDataset, read_labels, synthetic_class_names, write_synthetic_dataset
from cign_fast.data.signal_features import audio_tokens, signal_features_stamp, visual_tokens, write_signal_features


@pytest.fixture(scope="module")
def clips_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("clips"),
        num_classes=4,
        train_per_class=3,
        val_per_class=1,
        test_per_class=2,
        image_size=32,
        sample_rate=8000,
        seed=1,
    )


def test_features_are_read_back_with_the_documented_shapes_and_standardised(clips_root, tmp_path):
    root = write_signal_features(clips_root, tmp_path / "features", audio_chunks=5, audio_bands=12, visual_grid=2)
    names = synthetic_class_names(4)
    train = FeatureDataset(root, "train", names)
    test = FeatureDataset(root, "test", names)
    assert len(train) == 12 and len(test) == 8
    item = train[0]
    assert item["audio"].shape == (5, 12) and item["visual"].shape == (4, 16)  # 2x2 patches of 4x4 values
    stacked = torch.cat([train[i]["audio"] for i in range(len(train))])
    torch.testing.assert_close(stacked.mean(0), torch.zeros(12), atol=1e-4, rtol=0)
    torch.testing.assert_close(stacked.std(0, unbiased=False), torch.ones(12), atol=1e-3, rtol=0)
    assert {row.id for row in read_labels(root)} == {row.id for row in read_labels(clips_root)}
    stamp = signal_features_stamp(root)
    assert stamp is not None and stamp["audio_chunks"] == 5 and stamp["visual_grid"] == 2 and stamp["format"] == 1
    assert signal_features_stamp(clips_root) is None  # written by another writer: no stamp


def test_tokens_are_the_pooled_spectrogram_and_frame(clips_root):
    from cign_fast.data.audio import LogSpectrogram

    clip = read_labels(clips_root)[0].id
    audio = audio_tokens(clips_root / "audio" / f"{clip}.wav", 8000, LogSpectrogram(), chunks=4, bands=8)
    assert audio.shape == (4, 8) and audio.dtype == np.float32
    visual = visual_tokens(clips_root / "frames" / f"{clip}.jpg", grid=2, patch_pixels=2)
    assert visual.shape == (4, 4)
    from PIL import Image

    with Image.open(clips_root / "frames" / f"{clip}.jpg") as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0  # 32 x 32
    top_left = grey[:16, :16].reshape(2, 8, 2, 8).mean(axis=(1, 3)).reshape(-1)  # its 2x2 pooled values
    np.testing.assert_allclose(visual[0], top_left, atol=1e-5)


def test_bad_arguments_and_missing_files_are_named(clips_root, tmp_path):
    with pytest.raises(ValueError, match="audio_chunks: expected an int > 0"):
        write_signal_features(clips_root, tmp_path / "a", audio_chunks=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "labels.csv").write_text((clips_root / "labels.csv").read_text())
    with pytest.raises(FileNotFoundError, match="clips_root: .* is missing"):
        write_signal_features(broken, tmp_path / "b")
