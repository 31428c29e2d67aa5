"""Run frozen encoders once over a clip dataset and write a feature cache (see ``cign_fast.data.cache``).

The encoders are the ResNet-18 trunks of the model's raw-mode encoders (``cign_fast.model.encoders``), i.e.
the 512-channel maps before the model's trainable 1x1 projection, flattened to tokens: visual [49, 512] at
224 px, audio [63, 512] for a 3 s clip at 16 kHz (or one max-pooled token with ``audio_tokens="pooled"``).
A features-mode model then projects them with its own linear layer.

Extraction is resumable: each finished shard is recorded in the manifest at once, and a rerun with the same
settings keeps the shards that verify against their SHA-256 and computes only the others. A rerun on a
finished, intact cache writes nothing (the cache may lie on a read-only disk).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from cign_fast.data.benchmarks import class_order_of_first_appearance
from cign_fast.data.cache import (
    AUDIO_TOKEN_MODES,
    CACHE_DTYPES,
    MANIFEST_NAME,
    CorruptShardError,
    file_sha256,
    new_manifest,
    read_manifest,
    shard_file_name,
    verify_shard_file,
    write_manifest,
    write_shard_file,
)
from cign_fast.data.clips import ClipDataset
from cign_fast.data.labels import SPLITS, find_labels_file, read_labels
from cign_fast.data.skips import SkippedItem, SkipReport, collate_skipping
from cign_fast.model.encoders import ResNetTokenEncoder
from cign_fast.seeds import check_seed


class TrunkTokens(nn.Module):
    """A frozen ResNet-18 trunk as a token encoder: [B, C, H, W] -> [B, ceil(H/32) * ceil(W/32), 512]
    (``pooled``: global max pool first, [B, 1, 512])."""

    def __init__(self, in_channels: int, pooled: bool, weights: str | None, argument: str) -> None:
        super().__init__()
        self.trunk = ResNetTokenEncoder(in_channels, 1, pooled, weights, argument).trunk
        self.pooled = pooled
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_map = self.trunk(x)
        if self.pooled:
            feature_map = F.adaptive_max_pool2d(feature_map, 1)
        return feature_map.flatten(2).transpose(1, 2)


def build_frozen_encoders(
    *, audio_weights: str | None = None, visual_weights: str | None = None, audio_tokens: str = "map", seed: int = 0
) -> dict[str, nn.Module]:
    """``{"audio": TrunkTokens(1 channel), "visual": TrunkTokens(3 channels)}``, weights from local
    torchvision ResNet-18 files when given (else random, drawn from ``seed`` without touching torch's global RNG)."""
    if audio_tokens not in AUDIO_TOKEN_MODES:
        raise ValueError(f"audio_tokens: expected one of {', '.join(AUDIO_TOKEN_MODES)}, got {audio_tokens!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        return {
            "audio": TrunkTokens(1, audio_tokens == "pooled", audio_weights, "audio_weights"),
            "visual": TrunkTokens(3, False, visual_weights, "visual_weights"),
        }


def describe_encoders(
    *, audio_weights: str | None = None, visual_weights: str | None = None, audio_tokens: str = "map", seed: int = 0
) -> dict[str, Any]:
    """What :func:`build_frozen_encoders` builds, for the manifest (weights named by SHA-256, not path)."""

    def weights(path: str | None) -> str | None:
        return None if path is None else file_sha256(Path(path))

    return {
        "name": "resnet18-trunk",
        "audio_tokens": audio_tokens,
        "audio_weights_sha256": weights(audio_weights),
        "visual_weights_sha256": weights(visual_weights),
        "seed": seed,
    }


@dataclass
class ExtractionResult:
    cache_dir: Path
    shards_written: int
    shards_kept: int
    clips: dict[str, int]  # clips cached per split
    skips: SkipReport


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def _open_manifest(cache_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue (same settings) or a fresh one; refuses a folder holding something else."""
    if (cache_dir / MANIFEST_NAME).is_file():
        manifest = read_manifest(cache_dir)
        if manifest["settings"] != settings:
            changed = sorted(
                key
                for key in settings.keys() | manifest["settings"].keys()
                if settings.get(key) != manifest["settings"].get(key)
            )
            raise ValueError(
                f"out: {cache_dir} holds a feature cache made with other settings (differs in "
                f"{', '.join(changed)}); pass an empty or new folder"
            )
        return manifest
    if cache_dir.exists() and any(cache_dir.iterdir()):
        raise ValueError(f"out: {cache_dir} is not empty and holds no feature cache; pass an empty or new folder")
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = new_manifest(settings)
    write_manifest(cache_dir, manifest)
    return manifest


def _shard_is_intact(cache_dir: Path, entry: dict[str, Any] | None) -> bool:
    if entry is None:
        return False
    try:
        for modality in ("audio", "visual"):
            if entry[modality] is not None:
                verify_shard_file(cache_dir, entry[modality])
    except CorruptShardError:
        return False
    return True


def _encode(
    encoders: Mapping[str, nn.Module], batch: dict[str, Any], device: torch.device, dtype: str
) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        return {
            modality: encoders[modality](batch[modality].to(device)).float().cpu().numpy().astype(dtype)
            for modality in ("audio", "visual")
        }


def extract_features(
    data_root: str | Path,
    cache_dir: str | Path,
    encoders: Mapping[str, nn.Module],
    encoder_info: Mapping[str, Any],
    *,
    image_size: int = 224,
    sample_rate: int = 16000,
    shard_size: int = 256,
    batch_size: int = 32,
    num_workers: int = 0,
    dtype: str = "float16",
    device: str | torch.device = "cpu",
    progress: bool | None = None,
    on_shard: Callable[[str, int], None] | None = None,
) -> ExtractionResult:
    """Encodes every clip of every split of ``data_root`` (eval transforms) into ``cache_dir``.

    ``encoders``: ``{"audio": module, "visual": module}`` mapping ``ClipDataset`` batches ([B, 1, 257, T] and
    [B, 3, H, W]) to tokens [B, S, D]; ``encoder_info`` describes them (stored in the manifest; a rerun with a
    different description is refused). ``progress``: tqdm bar (None: only on a terminal). ``on_shard(split,
    index)`` is called after each shard is written.
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(CACHE_DTYPES)}, got {dtype!r}")
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    data_root, cache_dir, device = Path(data_root), Path(cache_dir), torch.device(device)
    rows = read_labels(data_root)
    datasets = {
        split: ClipDataset(
            data_root,
            split,
            class_order_of_first_appearance(rows, split),
            train=False,
            image_size=image_size,
            sample_rate=sample_rate,
            rows=rows,
        )
        for split in SPLITS
        if any(row.split == split for row in rows)
    }
    settings = {
        "labels_sha256": file_sha256(find_labels_file(data_root)),
        "image_size": image_size,
        "sample_rate": sample_rate,
        "shard_size": shard_size,
        "dtype": dtype,
        "encoders": dict(encoder_info),
        "splits": {split: {"num_clips": len(ds), "ids_sha256": _ids_digest(ds.ids)} for split, ds in datasets.items()},
    }
    manifest = _open_manifest(cache_dir, settings)
    as_found = copy.deepcopy(manifest)
    label_of = {row.id: row.label for row in rows}
    encoders = {modality: encoders[modality].to(device).eval() for modality in ("audio", "visual")}

    written = kept = 0
    pending: list[tuple[str, int, list[int]]] = []  # (split, shard index, dataset indices)
    for split, dataset in datasets.items():
        record = manifest["splits"].setdefault(split, {"shards": {}, "skipped": []})
        record["skipped"] = [
            [item.id, label_of[item.id], item.reason, item.detail] for item in dataset.skip_report.items()
        ]
        for shard in range(math.ceil(len(dataset) / shard_size)):
            if _shard_is_intact(cache_dir, record["shards"].get(str(shard))):
                kept += 1
            else:
                indices = list(range(shard * shard_size, min((shard + 1) * shard_size, len(dataset))))
                pending.append((split, shard, indices))
    if pending:
        manifest["complete"] = False
        write_manifest(cache_dir, manifest)
    bar = tqdm(
        total=sum(len(indices) for _s, _i, indices in pending),
        unit="clip",
        desc="extracting features",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    for split, shard, indices in pending:
        loader = DataLoader(
            datasets[split],
            batch_size=batch_size,
            sampler=indices,
            num_workers=num_workers,
            collate_fn=collate_skipping,
        )
        ids: list[str] = []
        skipped: list[SkippedItem] = []
        outputs: dict[str, list[np.ndarray]] = {"audio": [], "visual": []}
        for batch in loader:
            skipped.extend(batch["skipped"])
            bar.update(len(batch["id"]) + len(batch["skipped"]))
            if not batch["id"]:
                continue
            ids.extend(batch["id"])
            for modality, array in _encode(encoders, batch, device, dtype).items():
                outputs[modality].append(array)
        entry: dict[str, Any] = {
            "ids": ids,
            "labels": [label_of[clip_id] for clip_id in ids],
            "skipped": [[item.id, label_of[item.id], item.reason, item.detail] for item in skipped],
        }
        for modality in ("audio", "visual"):
            entry[modality] = None
            if ids:
                array = np.concatenate(outputs[modality])
                shape = manifest["shapes"].setdefault(modality, list(array.shape[1:]))
                if list(array.shape[1:]) != shape:
                    raise ValueError(
                        f"{modality} encoder: gave tokens {list(array.shape[1:])} for {split} shard "
                        f"{shard}, earlier shards {shape}"
                    )
                entry[modality] = write_shard_file(cache_dir, shard_file_name(split, modality, shard), array)
        manifest["splits"][split]["shards"][str(shard)] = entry
        write_manifest(cache_dir, manifest)
        written += 1
        if on_shard is not None:
            on_shard(split, shard)
    bar.close()

    skips = SkipReport()
    clips: dict[str, int] = {}
    for split, record in manifest["splits"].items():
        for clip_id, _label, reason, detail in record["skipped"]:
            skips.add(SkippedItem(clip_id, reason, detail))
        for entry in record["shards"].values():
            skips.update(SkippedItem(clip_id, reason, detail) for clip_id, _label, reason, detail in entry["skipped"])
        clips[split] = sum(len(entry["ids"]) for entry in record["shards"].values())
    manifest["complete"] = True
    if pending or manifest != as_found:  # a finished, intact cache is only read (it may lie on a read-only disk)
        write_manifest(cache_dir, manifest)
    return ExtractionResult(cache_dir=cache_dir, shards_written=written, shards_kept=kept, clips=clips, skips=skips)
