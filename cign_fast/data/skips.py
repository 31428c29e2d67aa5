"""Skipping clips that cannot be used, and counting them.

A dataset never substitutes a random clip for a bad one. Instead:

* clips missing a modality are found when the dataset is built and listed in ``dataset.skip_report``;
* a clip that fails to decode makes ``__getitem__`` return a :class:`SkippedItem` (with a warning);
  :func:`collate_skipping` drops those from the batch and lists them under ``batch["skipped"]``, so the
  record reaches the main process even when the DataLoader decodes in worker processes.

Typical training loop::

    report = SkipReport()
    report.merge(train_set.skip_report)
    for batch in DataLoader(train_set, batch_size=..., collate_fn=collate_skipping, num_workers=2):
        report.update(batch["skipped"])
        if batch["label"].numel() == 0:   # every clip of this batch failed
            continue
        ...
    print(report.summary())
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import default_collate

MISSING_AUDIO = "missing_audio"
MISSING_VISUAL = "missing_visual"
MISSING_AUDIO_AND_VISUAL = "missing_audio_and_visual"
CORRUPT_AUDIO = "corrupt_audio"
EMPTY_AUDIO = "empty_audio"
CORRUPT_IMAGE = "corrupt_image"
NON_FINITE_INPUT = "non_finite_input"  # decoded, but the model input (spectrogram, image, features) holds NaN / inf
SKIP_REASONS = (
    MISSING_AUDIO,
    MISSING_VISUAL,
    MISSING_AUDIO_AND_VISUAL,
    CORRUPT_AUDIO,
    EMPTY_AUDIO,
    CORRUPT_IMAGE,
    NON_FINITE_INPUT,
)


class SkippedClipWarning(UserWarning):
    """Warned once per skipped clip (filter it with ``warnings.simplefilter("ignore", SkippedClipWarning)``)."""


class ClipDecodeError(Exception):
    """A clip's file could not be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, path: object, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.reason = reason
        self.path = path
        self.detail = detail


@dataclass(frozen=True)
class SkippedItem:
    """What a dataset returns in place of a clip it could not decode."""

    id: str
    reason: str
    detail: str = ""


def warn_skipped(item: SkippedItem) -> None:
    warnings.warn(f"skipping clip {item.id!r} ({item.reason}): {item.detail}", SkippedClipWarning, stacklevel=3)


def non_finite_inputs(clip_id: str, **inputs: torch.Tensor) -> SkippedItem | None:
    """A warned :class:`SkippedItem` (``non_finite_input``) when one of ``inputs`` holds NaN or inf, else None."""
    bad = [name for name, tensor in inputs.items() if not bool(torch.isfinite(tensor).all())]
    if not bad:
        return None
    item = SkippedItem(clip_id, NON_FINITE_INPUT, f"the {' and '.join(bad)} input holds NaN or inf")
    warn_skipped(item)
    return item


class SkipReport:
    """Skipped clips by id (a clip skipped in every epoch counts once) with per-reason counts."""

    def __init__(self) -> None:
        self._clips: dict[str, SkippedItem] = {}

    def add(self, item: SkippedItem) -> None:
        self._clips.setdefault(item.id, item)

    def update(self, items: Iterable[SkippedItem]) -> None:
        """Record a batch's ``batch["skipped"]`` list."""
        for item in items:
            self.add(item)

    def merge(self, other: SkipReport) -> None:
        self.update(other.items())

    @property
    def counts(self) -> dict[str, int]:
        """Number of distinct skipped clips per reason (reasons with none are left out)."""
        counts: dict[str, int] = {}
        for item in self._clips.values():
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return dict(sorted(counts.items()))

    def items(self) -> list[SkippedItem]:
        """The skipped clips, sorted by id."""
        return [self._clips[clip_id] for clip_id in sorted(self._clips)]

    def ids(self, reason: str | None = None) -> list[str]:
        """Skipped clip ids (all, or those skipped for ``reason``), sorted."""
        return sorted(i for i, item in self._clips.items() if reason is None or item.reason == reason)

    def __len__(self) -> int:
        return len(self._clips)

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self._clips

    def summary(self, max_ids: int = 5) -> str:
        """One line per reason, e.g. ``corrupt_audio: 2 (a_000001, b_000030)``."""
        if not self._clips:
            return "no clips skipped"
        lines = [f"{len(self._clips)} clip(s) skipped:"]
        for reason, count in self.counts.items():
            ids = self.ids(reason)
            shown = ", ".join(ids[:max_ids]) + (", ..." if len(ids) > max_ids else "")
            lines.append(f"  {reason}: {count} ({shown})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"total", "counts", "clips": {id: {"reason", "detail"}}}``."""
        clips = {i: {"reason": item.reason, "detail": item.detail} for i, item in sorted(self._clips.items())}
        return {"total": len(self._clips), "counts": self.counts, "clips": clips}


def collate_skipping(items: Sequence[Mapping[str, Any] | SkippedItem]) -> dict[str, Any]:
    """DataLoader ``collate_fn``: stacks the decoded clips, drops :class:`SkippedItem` entries.

    Returns the default-collated dict of the good items (``"audio"``, ``"visual"``, ``"label"`` [B] long,
    ``"id"`` list) plus ``"skipped"``: the list of dropped :class:`SkippedItem`. When every item failed,
    ``"label"`` is an empty long tensor, ``"id"`` is empty and the other tensor keys are ``None``.
    """
    good = [item for item in items if not isinstance(item, SkippedItem)]
    skipped = [item for item in items if isinstance(item, SkippedItem)]
    if good:
        batch = dict(default_collate(good))
    else:
        batch = {"audio": None, "visual": None, "label": torch.empty(0, dtype=torch.long), "id": []}
    batch["skipped"] = skipped
    return batch
