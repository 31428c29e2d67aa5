"""What makes two training sessions the same run: the result-affecting settings and the data.

* Settings: the method, every key of the ``data``, ``model``, ``optim`` and ``memory`` sections and of
  the method's own sections (CIGN's ``distill``), and ``run.seed``, except the few that cannot change a result
  (:data:`RESULT_NEUTRAL_KEYS`: where the data lies, how many loader workers read it, the evaluation batch size).
* Data: the number of clips in the training and evaluation sets and the SHA-256 of the labels file
  and, in features mode, of the cache's ``manifest.json`` (which holds every shard's SHA-256) or of
  AV-CIL's files (category dictionary and feature files). Raw mode's media files are not hashed (a
  dataset's media are large): there a changed clip list or clip count shows, a re-encoded file does not.

A run records its data fingerprint in ``run.json`` and its settings in ``config.yaml``; ``--resume``
refuses a session whose fingerprint or settings differ, naming both values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cign_fast.data.cache import MANIFEST_NAME, file_sha256
from cign_fast.data.features import AVCIL_AUDIO, AVCIL_LABELS, AVCIL_VISUAL_H5, AVCIL_VISUAL_NPY
from cign_fast.data.labels import LABELS_FILE_NAMES
from cign_fast.methods import method_class
from cign_fast.train.config import TrainConfig
from cign_fast.train.datasets import RunData

COMPATIBLE_SECTIONS = ("data", "model", "optim", "memory")  # plus the method's own sections
RESULT_AFFECTING_RUN_KEYS = ("seed",)
RESULT_NEUTRAL_KEYS = ("data.root", "data.num_workers", "optim.eval_batch_size")
SHOWN_DIGEST_CHARS = 12
FEATURE_IDENTITY_FILES = (MANIFEST_NAME, AVCIL_LABELS, AVCIL_AUDIO, AVCIL_VISUAL_NPY, AVCIL_VISUAL_H5)


def settings_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"section.key: A there, B here"`` for every result-affecting key whose value differs (the method first:
    another method's settings are not compared)."""
    if saved.get("method") != current["method"]:
        return [f"method: {saved.get('method')!r} there, {current['method']!r} here"]
    sections = COMPATIBLE_SECTIONS + method_class(current["method"]).config_sections
    keys = [
        (section, key) for section in sections for key in sorted(set(saved.get(section) or {}) | set(current[section]))
    ]
    keys += [("run", key) for key in RESULT_AFFECTING_RUN_KEYS]
    differences = []
    for section, key in keys:
        dotted = f"{section}.{key}"
        before, now = (saved.get(section) or {}).get(key), current[section].get(key)
        if before != now and dotted not in RESULT_NEUTRAL_KEYS:
            differences.append(f"{dotted}: {before!r} there, {now!r} here")
    return differences


def identity_files(root: Path, input_mode: str) -> list[Path]:
    """The files of ``root`` whose SHA-256 identifies its data (see the module docstring)."""
    labels = next((root / name for name in LABELS_FILE_NAMES if (root / name).is_file()), None)
    files = [] if labels is None else [labels]
    if input_mode == "features":
        files += [root / name for name in FEATURE_IDENTITY_FILES if (root / name).is_file()]
    return files


def data_fingerprint(config: TrainConfig, data: RunData) -> dict[str, Any]:
    """``{"files": {name: sha256}, "clips": {split: count}}`` of the run's data."""
    root = config.data.root_path()
    return {
        "files": {
            str(path.relative_to(root)): file_sha256(path) for path in identity_files(root, config.data.input_mode)
        },
        "clips": {"train": len(data.train_set), config.data.eval_split: len(data.eval_set)},
    }


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"labels.csv sha256 1a2b3c4d5e6f there, 9f8e7d6c5b4a here"``, ``"train clips: 96 there, 90 here"``, ..."""

    def digest(files: dict[str, str], name: str) -> str:
        return f"sha256 {files[name][:SHOWN_DIGEST_CHARS]}" if name in files else "absent"

    differences = [
        f"{name} {digest(recorded['files'], name)} there, {digest(current['files'], name)} here"
        for name in sorted(set(recorded["files"]) | set(current["files"]))
        if recorded["files"].get(name) != current["files"].get(name)
    ]
    differences += [
        f"{split} clips: {recorded['clips'].get(split)} there, {current['clips'].get(split)} here"
        for split in sorted(set(recorded["clips"]) | set(current["clips"]))
        if recorded["clips"].get(split) != current["clips"].get(split)
    ]
    return differences
