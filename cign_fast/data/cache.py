"""The project's feature cache: per split, .npy shards of token features plus a JSON manifest.

Layout::

    CACHE/manifest.json
    CACHE/{split}/audio-00000.npy     [n, S_a, D_a]   (float16 or float32, memory-mappable)
    CACHE/{split}/visual-00000.npy    [n, S_v, D_v]

The manifest records the settings the cache was made with, the feature shapes and, per shard, the clip ids,
labels, each file's shape and SHA-256, and the clips skipped while extracting it. Files and the manifest are
written atomically (:func:`cign_fast.files.write_atomically`), so a killed extraction leaves only whole shards.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from cign_fast.files import write_atomically

CACHE_FORMAT = "cign_fast.feature_cache"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODALITIES = ("audio", "visual")
CACHE_DTYPES = ("float16", "float32")
AUDIO_TOKEN_MODES = ("map", "pooled")  # the encoders' audio token map, or one max-pooled token (the authors')


class CorruptShardError(ValueError):
    """A shard file whose content no longer matches the manifest (the message names the file)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_file_name(split: str, modality: str, index: int) -> str:
    """Path of a shard file relative to the cache folder, e.g. ``train/audio-00003.npy``."""
    return f"{split}/{modality}-{index:05d}.npy"


def write_shard_file(cache_dir: Path, relative: str, array: np.ndarray) -> dict[str, Any]:
    """Saves ``array`` as ``cache_dir/relative``; returns its manifest entry ``{"file", "shape", "sha256"}``."""
    path = cache_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomically(path, buffer.getbuffer())
    return {"file": relative, "shape": list(array.shape), "sha256": file_sha256(path)}


def verify_shard_file(cache_dir: Path, entry: dict[str, Any]) -> None:
    """Raises :class:`CorruptShardError` naming the file when it is missing or its SHA-256 differs."""
    path = cache_dir / entry["file"]
    if not path.is_file():
        raise CorruptShardError(f"feature cache shard {path} is missing (listed in {cache_dir / MANIFEST_NAME})")
    if file_sha256(path) != entry["sha256"]:
        raise CorruptShardError(f"feature cache shard {path} is corrupted: its SHA-256 differs from the manifest's")


def open_shard_file(cache_dir: Path, entry: dict[str, Any]) -> np.ndarray:
    """The shard as a read-only memory map, its shape checked against the manifest."""
    path = cache_dir / entry["file"]
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CorruptShardError(f"feature cache shard {path} cannot be read ({error})") from error
    if list(array.shape) != entry["shape"]:
        raise CorruptShardError(
            f"feature cache shard {path} has shape {list(array.shape)}, manifest says {entry['shape']}"
        )
    return array


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    path = cache_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"feature cache manifest {path} is not valid JSON ({error})") from error
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        raise ValueError(
            f"feature cache manifest {path}: expected format {CACHE_FORMAT!r} version {CACHE_VERSION}, "
            f"got {manifest.get('format')!r} version {manifest.get('version')!r}"
        )
    return manifest


def write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    write_atomically(cache_dir / MANIFEST_NAME, text)


def new_manifest(settings: dict[str, Any]) -> dict[str, Any]:
    """An empty manifest: no shard written yet, ``complete`` false."""
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "settings": settings,
        "complete": False,
        "shapes": {},
        "splits": {},
    }
