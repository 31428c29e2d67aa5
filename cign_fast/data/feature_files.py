"""Writing pre-extracted token maps in AV-CIL's feature layout, the one features mode reads
(:class:`cign_fast.data.FeatureDataset`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cign_fast.data.labels import SPLITS, LabelRow

MODALITIES = ("audio", "visual")


def write_feature_folder(root: str | Path, rows: list[LabelRow], features: dict[str, dict[str, np.ndarray]]) -> Path:
    """Writes AV-CIL's files for ``rows``: ``all_id_category_dict.npy`` ({split: {id: label}}), the two
    ``{modality}_pretrained_feature/{modality}_pretrained_feature_dict.npy`` ({id: [S, D] float32}, from
    ``features[modality]``) and ``labels.csv``. Returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    categories: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
    for row in rows:
        categories.setdefault(row.split, {})[row.id] = row.label
    # AV-CIL's files are pickled dicts: np.save of a 0-d object array holding the dict
    np.save(root / "all_id_category_dict.npy", np.array(categories, dtype=object), allow_pickle=True)
    for modality in MODALITIES:
        folder = root / f"{modality}_pretrained_feature"
        folder.mkdir(exist_ok=True)
        np.save(
            folder / f"{modality}_pretrained_feature_dict.npy",
            np.array(features[modality], dtype=object),
            allow_pickle=True,
        )
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("id", "label", "split"))
        writer.writerows((row.id, row.label, row.split) for row in rows)
    return root
