"""Fixed signal features of a clip dataset, in AV-CIL's feature layout (features mode reads them).

No learned encoder: a clip's audio tokens are its log spectrogram (:class:`cign_fast.data.audio.LogSpectrogram`
of the centre 3 s) average-pooled to ``audio_chunks`` time chunks x ``audio_bands`` frequency bands, one token
per chunk [S_a = audio_chunks, D_a = audio_bands]; its visual tokens are its frame in grey, average-pooled to a
``visual_grid`` x ``visual_grid`` grid of patches, each patch pooled to ``patch_pixels`` x ``patch_pixels``
values [S_v = grid^2, D_v = patch_pixels^2]. Each feature dimension is then standardised with the mean and
standard deviation of the train split's tokens (every split with the same ones). Such features cannot drift or
forget: they let a continual method be measured on real recordings behind encoders that are frozen from the
start, the setting of the CIGN paper (pre-extracted features), without pretrained weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from cign_fast.data.audio import LogSpectrogram, load_clip_waveform
from cign_fast.data.feature_files import MODALITIES, write_feature_folder
from cign_fast.data.labels import read_labels

STAMP_FILE = "signal_features.json"  # the writer's parameters, next to the features
FORMAT_VERSION = 1  # raised when the features change for the same parameters (1: standardised with train)


def audio_tokens(path: Path, sample_rate: int, spectrogram: LogSpectrogram, chunks: int, bands: int) -> np.ndarray:
    """[chunks, bands] float32: the pooled log spectrogram of the clip's centre 3 s, one token per time chunk."""
    spec = spectrogram(load_clip_waveform(path, sample_rate))  # [257, T]
    return F.adaptive_avg_pool2d(spec[None, None], (bands, chunks))[0, 0].T.contiguous().numpy()


def visual_tokens(path: Path, grid: int, patch_pixels: int) -> np.ndarray:
    """[grid^2, patch_pixels^2] float32: the grey frame (values 0..1) pooled to patches, row-major."""
    with Image.open(path) as image:
        grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
    pooled = F.adaptive_avg_pool2d(grey[None, None], (grid * patch_pixels, grid * patch_pixels))[0, 0]
    patches = pooled.reshape(grid, patch_pixels, grid, patch_pixels).permute(0, 2, 1, 3)
    return patches.reshape(grid * grid, patch_pixels * patch_pixels).contiguous().numpy()


def write_signal_features(
    clips_root: str | Path,
    root: str | Path,
    *,
    sample_rate: int = 8000,
    audio_chunks: int = 10,
    audio_bands: int = 64,
    visual_grid: int = 4,
    patch_pixels: int = 4,
) -> Path:
    """Reads the clip dataset ``clips_root`` (``labels.csv``, ``frames/{id}.jpg``, ``audio/{id}.wav``) and writes
    every clip's fixed signal features (module docstring) to ``root`` with :func:`write_feature_folder`."""
    for name, value in (
        ("sample_rate", sample_rate),
        ("audio_chunks", audio_chunks),
        ("audio_bands", audio_bands),
        ("visual_grid", visual_grid),
        ("patch_pixels", patch_pixels),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}: expected an int > 0, got {value!r}")
    clips_root = Path(clips_root)
    parameters = {
        "format": FORMAT_VERSION,
        "sample_rate": sample_rate,
        "audio_chunks": audio_chunks,
        "audio_bands": audio_bands,
        "visual_grid": visual_grid,
        "patch_pixels": patch_pixels,
    }
    rows = read_labels(clips_root)
    spectrogram = LogSpectrogram()
    features: dict[str, dict[str, np.ndarray]] = {modality: {} for modality in MODALITIES}
    with torch.no_grad():
        for row in rows:
            audio, frame = clips_root / "audio" / f"{row.id}.wav", clips_root / "frames" / f"{row.id}.jpg"
            for path in (audio, frame):
                if not path.is_file():
                    raise FileNotFoundError(f"clips_root: {path} is missing (clip {row.id!r} of labels.csv)")
            features["audio"][row.id] = audio_tokens(audio, sample_rate, spectrogram, audio_chunks, audio_bands)
            features["visual"][row.id] = visual_tokens(frame, visual_grid, patch_pixels)
    train = [row.id for row in rows if row.split == "train"]
    if not train:
        raise ValueError(f"clips_root: {clips_root} has no train clips to standardise the features with")
    for by_id in features.values():
        stacked = np.concatenate([by_id[clip_id] for clip_id in train])  # [train clips x S, D]
        mean, std = stacked.mean(axis=0), stacked.std(axis=0) + 1e-6
        for clip_id, tokens in by_id.items():
            by_id[clip_id] = ((tokens - mean) / std).astype(np.float32)
    written = write_feature_folder(root, rows, features)
    (written / STAMP_FILE).write_text(json.dumps(parameters, indent=2) + "\n")
    return written


def signal_features_stamp(root: str | Path) -> dict | None:
    """The parameters :func:`write_signal_features` wrote ``root`` with, or None (another writer, or an older
    version of this one: such a folder should be written again)."""
    stamp = Path(root) / STAMP_FILE
    return json.loads(stamp.read_text()) if stamp.is_file() else None
