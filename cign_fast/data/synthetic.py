"""A small synthetic audio-visual dataset written as real files (JPEG frames, WAV audio, labels.csv).

Each class has an image pattern (background hue + shape, with colour / position / pixel noise) and a sound
pattern (tone at a class frequency with its octave, amplitude rhythm, white noise). In every block of four
classes (4j .. 4j+3), classes 4j and 4j+2 share the image pattern (told apart only by sound) and 4j+1 and
4j+3 share the sound pattern (told apart only by image). So each modality alone confuses some pairs and
audio-visual prediction beats both; and with tasks of consecutive classes in pairs ({4j, 4j+1},
{4j+2, 4j+3}) the two members of a confusable pair fall into different tasks, so within every task both
modalities carry signal. Every clip is drawn from its own seed (seed, class, split, index):
the output is deterministic and a clip does not change when other counts change.
"""

from __future__ import annotations

import colorsys
import csv
import math
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from cign_fast.data.feature_files import write_feature_folder
from cign_fast.data.labels import SPLITS, LabelRow
from cign_fast.seeds import check_seed

SHAPES = ("circle", "square", "triangle", "diamond")


def synthetic_class_names(num_classes: int) -> list[str]:
    """``["class_00", "class_01", ...]``: the labels :func:`write_synthetic_dataset` writes, in class order."""
    width = max(2, len(str(num_classes - 1)))
    return [f"class_{index:0{width}d}" for index in range(num_classes)]


def synthetic_confusable_pairs(num_classes: int) -> dict[str, list[tuple[int, int]]]:
    """Class-index pairs that one modality cannot tell apart: ``{"visual": [(0, 2), (4, 6), ...],
    "audio": [(1, 3), (5, 7), ...]}`` ("visual" pairs share the image pattern, "audio" pairs the sound).

    A trailing block of fewer than four classes pairs what it can: ``(4j, 4j+2)`` needs three classes,
    ``(4j+1, 4j+3)`` four; a class without a partner has patterns of its own."""
    pairs: dict[str, list[tuple[int, int]]] = {"visual": [], "audio": []}
    for first in range(0, num_classes, 4):
        for modality, offset in (("visual", 0), ("audio", 1)):
            if first + offset + 2 < num_classes:
                pairs[modality].append((first + offset, first + offset + 2))
    return pairs


def _pattern_of_class(num_classes: int, shared: list[tuple[int, int]]) -> list[int]:
    """Class index -> pattern index, where each pair in ``shared`` gets one pattern."""
    partner = {second: first for first, second in shared}
    patterns: list[int] = []
    for index in range(num_classes):
        patterns.append(patterns[partner[index]] if index in partner else max(patterns, default=-1) + 1)
    return patterns


def _render_image(pattern: int, num_patterns: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, size, 3] uint8: a shape on a background, both coloured by the pattern's hue, plus noise."""
    hue = pattern / num_patterns
    background = np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.85)) * 255 + rng.normal(0, 12, 3)
    foreground = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.8, 0.35)) * 255 + rng.normal(0, 12, 3)
    image = Image.new("RGB", (size, size), tuple(int(c) for c in np.clip(background, 0, 255)))
    draw = ImageDraw.Draw(image)
    cx, cy = size / 2 + rng.uniform(-size / 8, size / 8, 2)
    r = size * rng.uniform(0.2, 0.3)
    fill = tuple(int(c) for c in np.clip(foreground, 0, 255))
    shape = SHAPES[pattern % len(SHAPES)]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 20, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _render_audio(
    pattern: int, num_patterns: int, sample_rate: int, seconds: float, rng: np.random.Generator
) -> np.ndarray:
    """[round(seconds * sample_rate)] float32 in [-1, 1]: the pattern's tone and octave, rhythm, noise."""
    lowest, highest = 220.0, 0.35 * sample_rate
    frequency = lowest * (highest / lowest) ** (pattern / max(num_patterns - 1, 1))
    frequency *= 1 + rng.uniform(-0.015, 0.015)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    phases = rng.uniform(0, 2 * math.pi, 3)
    tone = np.sin(2 * math.pi * frequency * t + phases[0])
    if 2 * frequency < 0.45 * sample_rate:
        tone += 0.5 * np.sin(2 * math.pi * 2 * frequency * t + phases[1])
    rhythm_hz = 3.0 + 2.0 * (pattern % 3)
    envelope = 0.6 + 0.4 * np.sin(2 * math.pi * rhythm_hz * t + phases[2])
    signal = rng.uniform(0.3, 0.5) * envelope * tone + rng.normal(0, 0.08, t.shape)
    return (signal / max(1.0, np.abs(signal).max() / 0.95)).astype(np.float32)


def check_num_classes(num_classes: int) -> None:
    """A synthetic dataset needs an int >= 2 classes."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, got {num_classes!r}")


def check_split_counts(
    train_per_class: int, val_per_class: int, test_per_class: int, image_size: int
) -> dict[str, int]:
    """Validate the per-class clip counts and image size of a written dataset; returns ``{split: count}``."""
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for split, count in counts.items():
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"{split}_per_class: expected an int >= 1, got {count!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
    return counts


def write_synthetic_dataset(
    root: str | Path,
    *,
    num_classes: int = 8,
    train_per_class: int = 24,
    val_per_class: int = 6,
    test_per_class: int = 10,
    image_size: int = 64,
    sample_rate: int = 8000,
    seed: int = 0,
    seconds: float = 1.0,
) -> Path:
    """Writes ``root/frames/{id}.jpg``, ``root/audio/{id}.wav`` (mono, ``seconds`` long, 16-bit) and
    ``root/labels.csv`` (``id,label,split``; labels from :func:`synthetic_class_names`). Returns ``root``.

    Ids are ``{label}_{split}_{index:04d}``. The loader tiles clips shorter than 3 s.
    """
    check_num_classes(num_classes)
    counts = check_split_counts(train_per_class, val_per_class, test_per_class, image_size)
    if not isinstance(sample_rate, int) or sample_rate < 1000:
        raise ValueError(f"sample_rate: expected an int >= 1000, got {sample_rate!r}")
    if not seconds > 0:
        raise ValueError(f"seconds: expected a number > 0, got {seconds!r}")
    seed = check_seed(seed)

    root = Path(root)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    names = synthetic_class_names(num_classes)
    shared = synthetic_confusable_pairs(num_classes)
    visual_pattern = _pattern_of_class(num_classes, shared["visual"])
    audio_pattern = _pattern_of_class(num_classes, shared["audio"])
    num_visual, num_audio = max(visual_pattern) + 1, max(audio_pattern) + 1
    rows = []
    for split_index, split in enumerate(SPLITS):
        for class_index, label in enumerate(names):
            for clip_index in range(counts[split]):
                clip_id = f"{label}_{split}_{clip_index:04d}"
                rng = np.random.default_rng([seed, class_index, split_index, clip_index])
                pixels = _render_image(visual_pattern[class_index], num_visual, image_size, rng)
                Image.fromarray(pixels).save(root / "frames" / f"{clip_id}.jpg", quality=90)
                samples = _render_audio(audio_pattern[class_index], num_audio, sample_rate, seconds, rng)
                soundfile.write(str(root / "audio" / f"{clip_id}.wav"), samples, sample_rate, subtype="PCM_16")
                rows.append((clip_id, label, split))
    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("id", "label", "split"))
        writer.writerows(rows)
    return root


def write_synthetic_features(
    root: str | Path,
    *,
    num_classes: int = 8,
    train_per_class: int = 24,
    val_per_class: int = 1,
    test_per_class: int = 10,
    audio_shape: tuple[int, int] = (4, 8),
    visual_shape: tuple[int, int] = (3, 6),
    noise: float = 1.0,
    seed: int = 0,
) -> Path:
    """The features-mode twin of :func:`write_synthetic_dataset`: pre-extracted token maps in AV-CIL's layout
    (``all_id_category_dict.npy`` and the two ``*_pretrained_feature_dict.npy``, plus ``labels.csv``).

    Every pattern has a Gaussian mean vector; a clip's audio [S_a, D_a] (``audio_shape``) and visual [S_v, D_v]
    tokens are its class's pattern means plus N(0, ``noise``^2) per entry. The classes share patterns as the
    clip dataset's do (:func:`synthetic_confusable_pairs`), so the confusable pairs fall into different tasks.
    Seconds to write and to train on: for quick probes of what a loss does over a whole incremental run.
    """
    check_num_classes(num_classes)
    counts = check_split_counts(train_per_class, val_per_class, test_per_class, image_size=8)
    if not noise >= 0:
        raise ValueError(f"noise: expected a number >= 0, got {noise!r}")
    seed = check_seed(seed)
    shared = synthetic_confusable_pairs(num_classes)
    patterns = {
        "audio": _pattern_of_class(num_classes, shared["audio"]),
        "visual": _pattern_of_class(num_classes, shared["visual"]),
    }
    shapes = {"audio": audio_shape, "visual": visual_shape}
    rng = np.random.default_rng(seed)
    means = {m: rng.normal(0, 1, (max(patterns[m]) + 1, shapes[m][1])) for m in ("audio", "visual")}
    features: dict[str, dict[str, np.ndarray]] = {"audio": {}, "visual": {}}
    rows = []
    for split in SPLITS:
        for class_index, label in enumerate(synthetic_class_names(num_classes)):
            for clip_index in range(counts[split]):
                clip_id = f"{label}_{split}_{clip_index:04d}"
                for modality in ("audio", "visual"):
                    tokens = means[modality][patterns[modality][class_index]] + rng.normal(0, noise, shapes[modality])
                    features[modality][clip_id] = tokens.astype(np.float32)
                rows.append(LabelRow(clip_id, label, split))
    return write_feature_folder(root, rows, features)
