"""Feature cache: extraction round trip, shard verification, resuming, AV-CIL's format, the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cign_fast.data import ClipDataset, synthetic_class_names, write_synthetic_dataset
from cign_fast.data.cache import CorruptShardError
from cign_fast.data.extract import build_frozen_encoders, describe_encoders, extract_features
from cign_fast.data.features import FeatureDataset

NAMES = synthetic_class_names(3)
SIZES = dict(image_size=32, sample_rate=8000)


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("clips"),
        num_classes=3,
        train_per_class=4,
        val_per_class=1,
        test_per_class=2,
        seed=5,
        **SIZES,
    )


@pytest.fixture(scope="module")
def encoders() -> dict[str, torch.nn.Module]:
    return build_frozen_encoders(seed=1)


def _extract(data_root: Path, cache: Path, encoders: dict, **options) -> object:
    settings = {"shard_size": 5, "batch_size": 3, "dtype": "float32", **SIZES, **options}
    return extract_features(data_root, cache, encoders, describe_encoders(seed=1), **settings)


@pytest.fixture(scope="module")
def cache(data_root: Path, encoders: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache") / "features"
    result = _extract(data_root, folder, encoders)
    assert result.clips == {"train": 12, "val": 3, "test": 6} and result.shards_written == 3 + 1 + 2
    return folder


def test_round_trip_equals_direct_encoder_output(data_root: Path, cache: Path, encoders: dict) -> None:
    clips = ClipDataset(data_root, "train", NAMES, train=False, **SIZES)
    features = FeatureDataset(cache, "train", NAMES[1:])
    assert features.targets == [0] * 4 + [1] * 4 and features.ids == clips.ids[4:]
    assert features.feature_dims == (512, 512)
    assert features.audio_shape == (4 * 9, 512) and features.visual_shape == (1, 512)
    for index in (0, 5, 7):
        item, clip = features[index], clips[index + 4]
        assert item["id"] == clip["id"] and item["label"] == clip["label"] - 1
        with torch.inference_mode():
            audio = encoders["audio"](clip["audio"].unsqueeze(0))[0]
            visual = encoders["visual"](clip["visual"].unsqueeze(0))[0]
        torch.testing.assert_close(item["audio"], audio, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(item["visual"], visual, rtol=1e-4, atol=1e-5)
        assert item["audio"].dtype == torch.float32


def test_float16_cache_and_pooled_audio(data_root: Path, cache: Path, tmp_path: Path) -> None:
    pooled = build_frozen_encoders(seed=1, audio_tokens="pooled")
    extract_features(
        data_root, tmp_path / "half", pooled, describe_encoders(seed=1, audio_tokens="pooled"), dtype="float16", **SIZES
    )
    half = FeatureDataset(tmp_path / "half", "test", NAMES)
    full = FeatureDataset(cache, "test", NAMES)
    assert half.audio_shape == (1, 512)
    torch.testing.assert_close(half[3]["audio"][0], full[3]["audio"].max(0).values, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(half[3]["visual"], full[3]["visual"], rtol=2e-3, atol=2e-3)
    assert np.load(tmp_path / "half/test/visual-00000.npy").dtype == np.float16


def test_corrupted_or_missing_shard_is_named(cache: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    shard = broken / "train/visual-00001.npy"
    content = bytearray(shard.read_bytes())
    content[-3] ^= 0xFF
    shard.write_bytes(bytes(content))
    with pytest.raises(CorruptShardError, match=r"train/visual-00001\.npy is corrupted"):
        FeatureDataset(broken, "train", NAMES)
    FeatureDataset(broken, "val", NAMES)  # other splits still verify
    FeatureDataset(broken, "train", NAMES[:1])  # class_00 lives in shard 0 only
    (broken / "test/audio-00001.npy").unlink()
    with pytest.raises(CorruptShardError, match=r"test/audio-00001\.npy is missing"):
        FeatureDataset(broken, "test", NAMES)


def test_extraction_resumes_after_interruption(data_root: Path, cache: Path, encoders: dict, tmp_path: Path) -> None:
    folder = tmp_path / "resumed"
    written: list[tuple[str, int]] = []

    def stop_after_two(split: str, index: int) -> None:
        written.append((split, index))
        if len(written) == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        _extract(data_root, folder, encoders, on_shard=stop_after_two)
    (folder / "train/.audio-00002.npy.tmp-999").write_bytes(b"half-written")  # as a kill mid-write leaves
    with pytest.raises(ValueError, match="incomplete"):
        FeatureDataset(folder, "train", NAMES)
    result = _extract(data_root, folder, encoders, on_shard=lambda split, index: written.append((split, index)))
    assert result.shards_kept == 2 and result.shards_written == 4
    assert written[2:] == [("train", 2), ("val", 0), ("test", 0), ("test", 1)]
    again = _extract(data_root, folder, encoders)
    assert again.shards_kept == 6 and again.shards_written == 0
    for split in ("train", "val", "test"):
        resumed, direct = FeatureDataset(folder, split, NAMES), FeatureDataset(cache, split, NAMES)
        assert resumed.ids == direct.ids
        assert all(torch.equal(resumed[i]["audio"], direct[i]["audio"]) for i in range(len(direct)))


def test_corrupted_shard_is_recomputed_on_rerun(data_root: Path, encoders: dict, tmp_path: Path) -> None:
    folder = tmp_path / "repair"
    _extract(data_root, folder, encoders)
    (folder / "val/audio-00000.npy").write_bytes(b"\x93NUMPY garbage")
    result = _extract(data_root, folder, encoders)
    assert result.shards_written == 1 and result.shards_kept == 5
    assert len(FeatureDataset(folder, "val", NAMES)) == 3


def test_other_settings_or_foreign_folder_refused(data_root: Path, cache: Path, encoders: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="other settings .*dtype"):
        _extract(data_root, cache, encoders, dtype="float16")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no feature cache"):
        _extract(data_root, tmp_path, encoders)


def test_bad_clips_skipped_during_extraction(data_root: Path, encoders: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data_root, copy)
    (copy / "audio/class_01_train_0002.wav").write_bytes(b"not audio at all")
    (copy / "frames/class_02_train_0000.jpg").unlink()
    with pytest.warns(UserWarning):
        result = _extract(copy, tmp_path / "cache", encoders)
    assert result.skips.counts == {"corrupt_audio": 1, "missing_visual": 1}
    assert result.clips["train"] == 10
    features = FeatureDataset(tmp_path / "cache", "train", NAMES[1:])
    assert features.skip_report.ids() == ["class_01_train_0002", "class_02_train_0000"]
    assert "class_01_train_0002" not in features.ids and len(features) == 6


def _write_avcil(root: Path, visual_as_h5: bool) -> None:
    rng = np.random.default_rng(0)
    ids = {"train": ["v1", "v2", "v3"], "test": ["v4"]}
    categories = {
        split: {clip: ("dog" if clip in ("v1", "v4") else "cat") for clip in clips} for split, clips in ids.items()
    }
    (root / "audio_pretrained_feature").mkdir(parents=True)
    (root / "visual_pretrained_feature").mkdir()
    np.save(root / "all_id_category_dict.npy", categories)
    np.save(
        root / "audio_pretrained_feature/audio_pretrained_feature_dict.npy",
        {clip: rng.normal(size=768).astype(np.float32) for clip in ("v1", "v2", "v4")},
    )
    visual = {clip: rng.normal(size=(8, 16)).astype(np.float32) for clip in ("v1", "v2", "v3", "v4")}
    if visual_as_h5:
        import h5py

        with h5py.File(root / "visual_pretrained_feature/visual_features.h5", "w") as handle:
            for clip, array in visual.items():
                handle.create_dataset(clip, data=array)
    else:
        np.save(root / "visual_pretrained_feature/visual_pretrained_feature_dict.npy", visual)


def test_avcil_npy_format(tmp_path: Path) -> None:
    _write_avcil(tmp_path, visual_as_h5=False)
    dataset = FeatureDataset(tmp_path, "train", ["cat", "dog"])
    assert dataset.format == "av-cil" and dataset.ids == ["v1", "v2"] and dataset.targets == [1, 0]
    assert dataset.skip_report.counts == {"missing_audio": 1}
    assert dataset.feature_dims == (768, 16) and dataset[0]["audio"].shape == (1, 768)
    assert dataset[1]["visual"].shape == (8, 16)


def test_avcil_h5_needs_h5py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "visual_pretrained_feature").mkdir()
    (tmp_path / "audio_pretrained_feature").mkdir()
    np.save(tmp_path / "all_id_category_dict.npy", {"train": {"v1": "dog"}})
    np.save(tmp_path / "audio_pretrained_feature/audio_pretrained_feature_dict.npy", {"v1": np.zeros(4)})
    (tmp_path / "visual_pretrained_feature/visual_features.h5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="optional package h5py"):
        FeatureDataset(tmp_path, "train", ["dog"])


def test_avcil_h5_format(tmp_path: Path) -> None:
    pytest.importorskip("h5py", reason="h5py is an optional dependency")
    _write_avcil(tmp_path, visual_as_h5=True)
    dataset = FeatureDataset(tmp_path, "train", ["cat", "dog"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
    batch = next(iter(loader))
    assert batch["visual"].shape == (2, 8, 16) and batch["id"] == ["v1", "v2"]


def test_unknown_folder_and_split(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a feature cache"):
        FeatureDataset(tmp_path, "train", NAMES)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="class.*'class_07' have no usable clip"):
        FeatureDataset(cache, "train", [*NAMES, "class_07"])


def test_cli_extract(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cign_fast.cli import extract as extract_cli

    parser = argparse.ArgumentParser()
    extract_cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            str(data_root),
            "--out",
            str(tmp_path / "cli"),
            "--image-size",
            "32",
            "--sample-rate",
            "8000",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--shard-size",
            "8",
        ]
    )
    assert extract_cli.main(args) == 0
    out = capsys.readouterr()
    assert "clips train 12, val 3, test 6; shards written 4" in out.out and "randomly initialised" in out.err
    assert FeatureDataset(tmp_path / "cli", "val", NAMES).audio_shape == (36, 512)
    assert (
        extract_cli.main(
            parser.parse_args(["--data", str(data_root), "--out", str(tmp_path / "cli"), "--dtype", "float32"])
        )
        == 2
    )
    assert "holds a feature cache made with other settings" in capsys.readouterr().err
