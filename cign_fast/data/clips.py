"""``ClipDataset``: decoded (log-spectrogram, image) pairs from a dataset folder.

Layout::

    ROOT/labels.csv (or vggsound.csv)     see cign_fast.data.labels
    ROOT/frames/{id}.jpg  or  ROOT/frames/{id}/*.jpg   (.jpeg / .png also read)
    ROOT/audio/{id}.wav                                 (.flac also read; any rate, mono or stereo)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cign_fast.data.audio import MAX_FILE_RATE, MIN_FILE_RATE, LogSpectrogram, load_clip_waveform
from cign_fast.data.labels import SPLITS, LabelRow, read_labels
from cign_fast.data.skips import (
    MISSING_AUDIO,
    MISSING_AUDIO_AND_VISUAL,
    MISSING_VISUAL,
    ClipDecodeError,
    SkippedClipWarning,
    SkippedItem,
    SkipReport,
    non_finite_inputs,
    warn_skipped,
)
from cign_fast.data.visual import IMAGE_SUFFIXES, choose_frame, image_transform, read_rgb

AUDIO_SUFFIXES = (".wav", ".flac")


def _media_by_id(folder: Path, suffixes: tuple[str, ...], allow_folders: bool) -> dict[str, Path]:
    """One directory listing: clip id -> file (or frame folder) in ``folder``. An entry that cannot be
    followed (a symlink loop, a dangling link) is not a folder; as a file it fails to decode, by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} does not exist")
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if allow_folders and _is_folder(entry):
                found[entry.name] = path
            elif path.suffix.lower() in suffixes:
                found.setdefault(path.stem, path)
    return found


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """A non-empty list of distinct strings (class index = position)."""
    if isinstance(class_names, str) or not all(isinstance(name, str) for name in class_names):
        raise TypeError(f"class_names: expected a list of strings, got {class_names!r}")
    names = list(class_names)
    if not names:
        raise ValueError("class_names: expected at least one class")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"class_names: duplicate class(es) {duplicates}")
    return names


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return split


def rows_of_classes(rows: Sequence[LabelRow], split: str, class_names: Sequence[str], source: object) -> list[LabelRow]:
    """The rows of ``split`` whose label is one of ``class_names``; refuses a split that lists no clip at all."""
    wanted = set(class_names)
    in_split = [row for row in rows if row.split == split]
    if not in_split:
        present = sorted({row.split for row in rows})
        raise ValueError(f"split {split!r}: {source} lists no clip in it (splits present: {', '.join(present)})")
    return [row for row in in_split if row.label in wanted]


def require_every_class(targets: Sequence[int], class_names: Sequence[str], split: str, source: object) -> None:
    """Raises ValueError naming the classes of ``class_names`` that have no usable clip."""
    present = set(targets)
    empty = [name for index, name in enumerate(class_names) if index not in present]
    if empty:
        raise ValueError(f"class(es) {', '.join(map(repr, empty))} have no usable clip in split {split!r} of {source}")


class ClipDataset(Dataset):
    """Clips of ``split`` whose label is in ``class_names`` (class index = position in ``class_names``).

    Item: ``{"audio": [1, 257, T] float32, "visual": [3, image_size, image_size] float32, "label": int,
    "id": str}`` with T = 1 + 3 * sample_rate // 238, or a :class:`SkippedItem` when a file cannot be decoded
    or its decoded input holds NaN / inf (use :func:`collate_skipping`). Clips missing a modality are excluded
    when the dataset is built and listed in ``skip_report``. ``targets`` (one class index per clip) needs no decoding.

    ``rows``: labels already read with :func:`read_labels` (default: read from ``root``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        train: bool,
        image_size: int = 224,
        sample_rate: int = 16000,
        *,
        rows: Sequence[LabelRow] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = check_split(split)
        self.class_names = check_class_names(class_names)
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size: expected an int >= 32, got {image_size!r}")
        if not isinstance(sample_rate, int) or not MIN_FILE_RATE <= sample_rate <= MAX_FILE_RATE:
            raise ValueError(
                f"sample_rate: expected an int in {MIN_FILE_RATE}..{MAX_FILE_RATE} Hz, got {sample_rate!r}"
            )
        self.train = bool(train)
        self.image_size = image_size
        self.sample_rate = sample_rate
        rows = read_labels(self.root) if rows is None else rows
        selected = rows_of_classes(rows, split, self.class_names, self.root)

        audio_files = _media_by_id(self.root / "audio", AUDIO_SUFFIXES, allow_folders=False)
        visual_files = _media_by_id(self.root / "frames", IMAGE_SUFFIXES, allow_folders=True)
        class_index = {name: index for index, name in enumerate(self.class_names)}
        self.skip_report = SkipReport()
        self.ids: list[str] = []
        self.targets: list[int] = []
        self._audio_paths: list[Path] = []
        self._visual_paths: list[Path] = []
        for row in selected:
            audio, visual = audio_files.get(row.id), visual_files.get(row.id)
            if audio is None or visual is None:
                reason = (
                    MISSING_AUDIO_AND_VISUAL
                    if audio is None and visual is None
                    else (MISSING_AUDIO if audio is None else MISSING_VISUAL)
                )
                missing = [
                    f"{self.root / folder}/{row.id}.*"
                    for folder, path in (("audio", audio), ("frames", visual))
                    if path is None
                ]
                self.skip_report.add(SkippedItem(row.id, reason, f"no {' and no '.join(missing)}"))
                continue
            self.ids.append(row.id)
            self.targets.append(class_index[row.label])
            self._audio_paths.append(audio)
            self._visual_paths.append(visual)
        if len(self.skip_report):
            warnings.warn(
                f"ClipDataset({self.root}, {split!r}): {self.skip_report.summary()}", SkippedClipWarning, stacklevel=2
            )
        require_every_class(self.targets, self.class_names, split, self.root)
        self._image_transform = image_transform(image_size, self.train)
        self._spectrogram = LogSpectrogram()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedItem:
        try:
            image = read_rgb(choose_frame(self._visual_paths[index], self.train))
            waveform = load_clip_waveform(self._audio_paths[index], self.sample_rate)
        except ClipDecodeError as error:
            skipped = SkippedItem(self.ids[index], error.reason, str(error))
            warn_skipped(skipped)
            return skipped
        with torch.no_grad():
            spectrogram = self._spectrogram(waveform).unsqueeze(0)
        visual = self._image_transform(image)
        bad = non_finite_inputs(self.ids[index], audio=spectrogram, visual=visual)
        if bad is not None:
            return bad
        return {"audio": spectrogram, "visual": visual, "label": self.targets[index], "id": self.ids[index]}
