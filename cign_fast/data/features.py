"""``FeatureDataset``: pre-extracted token features, from this project's cache or AV-CIL's released format.

* Project cache (a folder with ``manifest.json``, written by ``cign-fast extract``): shards are memory-mapped;
  with ``verify=True`` every shard the dataset uses is checked against its SHA-256 when the dataset is built
  (before DataLoader workers start), and a corrupted or missing shard raises :class:`CorruptShardError` naming it.
* AV-CIL (Pian et al., ICCV 2023) layout::

      ROOT/all_id_category_dict.npy                                {split: {clip id: category}}
      ROOT/audio_pretrained_feature/audio_pretrained_feature_dict.npy  {clip id: array}
      ROOT/visual_pretrained_feature/visual_pretrained_feature_dict.npy  {clip id: array}
        or ROOT/visual_pretrained_feature/visual_features.h5       one dataset per clip id (needs h5py)

  Those .npy files are pickled dictionaries. They are read with :mod:`cign_fast.data.safe_pickle`, which
  rebuilds only numpy arrays, dtypes and scalars: a file that holds any other object is refused by name
  before anything in it runs. A 1-D feature [D] is read as one token [1, D].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from cign_fast.data.cache import MANIFEST_NAME, open_shard_file, read_manifest, verify_shard_file
from cign_fast.data.clips import check_class_names, check_split, require_every_class
from cign_fast.data.safe_pickle import load_feature_dict, load_label_dict
from cign_fast.data.skips import (
    MISSING_AUDIO,
    MISSING_AUDIO_AND_VISUAL,
    MISSING_VISUAL,
    SkippedItem,
    SkipReport,
    non_finite_inputs,
)

AVCIL_LABELS = "all_id_category_dict.npy"
AVCIL_AUDIO = "audio_pretrained_feature/audio_pretrained_feature_dict.npy"
AVCIL_VISUAL_NPY = "visual_pretrained_feature/visual_pretrained_feature_dict.npy"
AVCIL_VISUAL_H5 = "visual_pretrained_feature/visual_features.h5"


def _as_tokens(array: Any, clip_id: str, modality: str) -> torch.Tensor:
    """A feature array as float32 tokens [S, D] (a 1-D [D] feature becomes [1, D])."""
    tokens = torch.from_numpy(np.array(array, dtype=np.float32))
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise ValueError(f"{modality} feature of clip {clip_id!r}: expected [S, D] or [D], got {tuple(tokens.shape)}")
    return tokens


class _FeatureSource(Protocol):
    """What :class:`FeatureDataset` reads: ``clips`` as ``(id, label, locator)``, a locator being the
    source's own key of a clip; ``skipped`` as ``(id, label, reason, detail)``."""

    clips: list[tuple[str, str, Any]]
    skipped: list[Any]

    def verify(self, locators: Sequence[Any]) -> None: ...

    def read(self, locator: Any) -> tuple[Any, Any]: ...

    def close(self) -> None: ...


class _ProjectCache:
    """Clips of one split of a project cache; ``read(locator)`` gives (audio, visual) arrays of one clip."""

    def __init__(self, cache_dir: Path, split: str) -> None:
        self.cache_dir = cache_dir
        manifest = read_manifest(cache_dir)
        if not manifest.get("complete"):
            raise ValueError(
                f"feature cache {cache_dir} is incomplete (its extraction was interrupted): run "
                f"`cign-fast extract` again with the same arguments to finish it"
            )
        if split not in manifest["splits"]:
            raise ValueError(
                f"split {split!r}: feature cache {cache_dir} has no such split "
                f"(splits: {', '.join(manifest['splits'])})"
            )
        self.shards: dict[int, dict[str, Any]] = {int(k): v for k, v in manifest["splits"][split]["shards"].items()}
        records = manifest["splits"][split]["skipped"] + [
            record for entry in self.shards.values() for record in entry["skipped"]
        ]
        self.skipped = [tuple(record) for record in records]
        self.clips = [
            (clip_id, label, (shard, row))
            for shard, entry in sorted(self.shards.items())
            for row, (clip_id, label) in enumerate(zip(entry["ids"], entry["labels"], strict=True))
        ]
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def verify(self, locators: Sequence[tuple[int, int]]) -> None:
        for shard in sorted({shard for shard, _row in locators}):
            for modality in ("audio", "visual"):
                verify_shard_file(self.cache_dir, self.shards[shard][modality])

    def read(self, locator: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        shard, row = locator
        arrays = []
        for modality in ("audio", "visual"):
            if (shard, modality) not in self._arrays:
                self._arrays[(shard, modality)] = open_shard_file(self.cache_dir, self.shards[shard][modality])
            arrays.append(self._arrays[(shard, modality)][row])
        return arrays[0], arrays[1]

    def close(self) -> None:
        self._arrays = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}  # memory maps are reopened in each worker process


class _AvCilFeatures:
    """Clips of one split in AV-CIL's released layout (see the module docstring)."""

    def __init__(self, root: Path, split: str) -> None:
        self.root = root
        categories = load_label_dict(root / AVCIL_LABELS)
        if split not in categories:
            raise ValueError(
                f"split {split!r}: {root / AVCIL_LABELS} has no such split (splits: {', '.join(categories)})"
            )
        audio_path = root / AVCIL_AUDIO
        if not audio_path.is_file():
            raise FileNotFoundError(f"AV-CIL features: {audio_path} does not exist")
        self.audio = load_feature_dict(audio_path)
        self.h5_path = root / AVCIL_VISUAL_H5
        if (root / AVCIL_VISUAL_NPY).is_file():
            self.visual: Any = load_feature_dict(root / AVCIL_VISUAL_NPY)
            visual_ids = set(self.visual)
        elif self.h5_path.is_file():
            self.visual = None  # opened lazily in each process (h5py handles do not survive fork)
            with self._h5py().File(self.h5_path, "r") as handle:
                visual_ids = set(handle.keys())
        else:
            raise FileNotFoundError(f"AV-CIL features: neither {root / AVCIL_VISUAL_NPY} nor {self.h5_path} exists")
        self.clips, self.skipped = [], []
        for clip_id, label in categories[split].items():
            has_audio, has_visual = clip_id in self.audio, clip_id in visual_ids
            if has_audio and has_visual:
                self.clips.append((clip_id, label, clip_id))
            else:
                reason = (
                    MISSING_AUDIO_AND_VISUAL
                    if not (has_audio or has_visual)
                    else (MISSING_VISUAL if has_audio else MISSING_AUDIO)
                )
                self.skipped.append((clip_id, label, reason, f"no feature for clip under {root}"))

    def _h5py(self) -> Any:
        try:
            import h5py
        except ImportError as error:
            raise ImportError(f"reading {self.h5_path} needs the optional package h5py (pip install h5py)") from error
        return h5py

    def verify(self, locators: Sequence[str]) -> None:
        """AV-CIL's format carries no checksums: nothing to verify."""

    def read(self, clip_id: str) -> tuple[Any, Any]:
        if self.visual is None:
            self.visual = self._h5py().File(self.h5_path, "r")
        visual = self.visual[clip_id]
        return self.audio[clip_id], visual if isinstance(visual, np.ndarray) else visual[()]

    def close(self) -> None:
        if self.visual is not None and not isinstance(self.visual, dict):
            self.visual.close()
            self.visual = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if not isinstance(state["visual"], dict):
            state["visual"] = None
        return state


def open_feature_source(root: Path, split: str) -> tuple[str, _FeatureSource]:
    """``(format, source)`` of the features in ``root``: ``"cign_fast"`` (a project cache) or ``"av-cil"``."""
    if (root / MANIFEST_NAME).is_file():
        return "cign_fast", _ProjectCache(root, split)
    if (root / AVCIL_LABELS).is_file():
        return "av-cil", _AvCilFeatures(root, split)
    raise FileNotFoundError(
        f"root: {root} holds neither a feature cache ({MANIFEST_NAME}) nor AV-CIL features ({AVCIL_LABELS})"
    )


class FeatureDataset(Dataset):
    """Pre-extracted features of ``split`` whose label is in ``class_names`` (class index = position).

    ``root``: a project feature cache (``manifest.json``) or an AV-CIL feature folder.
    Item: ``{"audio": [S_a, D_a] float32, "visual": [S_v, D_v] float32, "label": int, "id": str}``, or a
    :class:`SkippedItem` (``non_finite_input``) when a feature holds NaN or inf (use ``collate_skipping``).
    ``targets``, ``ids`` and ``skip_report`` (clips left out when the features were made, or without a
    feature) are available without reading any feature; ``feature_dims`` is ``(D_a, D_v)``.
    """

    def __init__(self, root: str | Path, split: str, class_names: Sequence[str], *, verify: bool = True) -> None:
        self.root = Path(root)
        self.split = check_split(split)
        self.class_names = check_class_names(class_names)
        self.format, self._source = open_feature_source(self.root, split)
        class_index = {name: index for index, name in enumerate(self.class_names)}
        selected = [(clip_id, label, locator) for clip_id, label, locator in self._source.clips if label in class_index]
        self.ids = [clip_id for clip_id, _label, _locator in selected]
        self.targets = [class_index[label] for _clip_id, label, _locator in selected]
        self._locators = [locator for _clip_id, _label, locator in selected]
        self.skip_report = SkipReport()
        for clip_id, label, reason, detail in self._source.skipped:
            if label in class_index:
                self.skip_report.add(SkippedItem(clip_id, reason, detail))
        require_every_class(self.targets, self.class_names, split, self.root)
        if verify:
            self._source.verify(self._locators)
        first_audio, first_visual = self._tokens(0)
        self._source.close()  # no file handle is inherited by DataLoader worker processes
        self.audio_shape = tuple(first_audio.shape)
        self.visual_shape = tuple(first_visual.shape)

    @property
    def feature_dims(self) -> tuple[int, int]:
        """(D_a, D_v): the widths ``ModelConfig(input_mode="features")`` needs."""
        return self.audio_shape[-1], self.visual_shape[-1]

    def __len__(self) -> int:
        return len(self.ids)

    def _tokens(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip_id = self.ids[index]
        audio, visual = self._source.read(self._locators[index])
        return _as_tokens(audio, clip_id, "audio"), _as_tokens(visual, clip_id, "visual")

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedItem:
        audio, visual = self._tokens(index)
        bad = non_finite_inputs(self.ids[index], audio=audio, visual=visual)
        if bad is not None:
            return bad
        return {"audio": audio, "visual": visual, "label": self.targets[index], "id": self.ids[index]}
