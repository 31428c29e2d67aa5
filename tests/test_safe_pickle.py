"""AV-CIL's pickled .npy dictionaries are read without running code: a crafted file is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cign_fast.data.features import AVCIL_AUDIO, AVCIL_LABELS, AVCIL_VISUAL_NPY, FeatureDataset
from cign_fast.data.safe_pickle import UnsafeFileError, load_feature_dict, load_label_dict


class CreatesFile:
    """Unpickling this object calls ``exec``: with a plain ``np.load(allow_pickle=True)`` it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def write_avcil(root: Path, labels: object, audio: object, visual: object) -> Path:
    (root / "audio_pretrained_feature").mkdir(parents=True)
    (root / "visual_pretrained_feature").mkdir(parents=True)
    for name, value in ((AVCIL_LABELS, labels), (AVCIL_AUDIO, audio), (AVCIL_VISUAL_NPY, visual)):
        np.save(root / name, value, allow_pickle=True)
    return root


def honest_avcil(root: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = {"train": {"a": "dog", "b": np.str_("cat")}, "test": {"c": "dog", "d": "cat"}}
    audio = {key: rng.normal(size=(2, 4)).astype(np.float32) for key in "abcd"}
    visual = {key: rng.normal(size=3).astype(np.float16) for key in "abcd"}
    return write_avcil(root, labels, audio, visual)


@pytest.mark.parametrize("target", ["labels", "audio", "visual"])
def test_crafted_npy_does_not_execute(tmp_path: Path, target: str) -> None:
    root = honest_avcil(tmp_path / "features")
    marker = tmp_path / "payload-ran"
    payload = {
        "labels": {"train": {"a": CreatesFile(marker)}},
        "audio": {"a": CreatesFile(marker)},
        "visual": {"a": CreatesFile(marker)},
    }[target]
    name = {"labels": AVCIL_LABELS, "audio": AVCIL_AUDIO, "visual": AVCIL_VISUAL_NPY}[target]
    np.save(root / name, payload, allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"refused to unpickle builtins\.exec") as caught:
        FeatureDataset(root, "train", ["dog", "cat"])
    assert str(root / name) in str(caught.value)
    assert not marker.exists()


def test_honest_avcil_files_still_load(tmp_path: Path) -> None:
    root = honest_avcil(tmp_path / "features")
    dataset = FeatureDataset(root, "train", ["dog", "cat"])
    assert dataset.ids == ["a", "b"] and dataset.targets == [0, 1]
    assert dataset[1]["audio"].shape == (2, 4) and dataset[1]["visual"].shape == (1, 3)


@pytest.mark.parametrize(
    "value, match",
    [
        (np.arange(3.0), "expected a pickled dictionary"),
        (np.array("train", dtype=object), "expected the file to be a dictionary, got str"),
        ({"train": {"a": 3.5}}, r"clip id \(str\) -> category"),
        ({"train": ["a"]}, "split 'train'"),
    ],
)
def test_label_dict_structure_is_checked(tmp_path: Path, value: object, match: str) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, value, allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=match):
        load_label_dict(path)


@pytest.mark.parametrize(
    "value, match",
    [
        ({"a": np.array(["x"])}, r"numeric array, got 'a' -> <U1"),
        ({"a": [1.0, 2.0]}, "numeric array, got 'a' -> list"),
        ({"a": np.array([object()], dtype=object)}, "refused to unpickle builtins.object"),
    ],
)
def test_feature_dict_structure_is_checked(tmp_path: Path, value: object, match: str) -> None:
    path = tmp_path / "features.npy"
    np.save(path, value, allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=match):
        load_feature_dict(path)


def test_truncated_or_foreign_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "features.npy"
    np.save(path, {"a": np.zeros(3)}, allow_pickle=True)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UnsafeFileError, match=f"{path}: damaged pickle"):
        load_feature_dict(path)
    path.write_bytes(b"not numpy at all")
    with pytest.raises(UnsafeFileError, match="not a readable .npy file"):
        load_feature_dict(path)
