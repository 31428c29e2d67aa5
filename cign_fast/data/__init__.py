"""Data: synthetic and real audio-visual clip datasets, labels, benchmark presets, feature caches.

Feature extraction (``cign_fast.data.extract``) is imported on its own: it needs the model's encoders.
The names below load on first use (:mod:`cign_fast.lazy`).
"""

from typing import TYPE_CHECKING

from cign_fast.lazy import lazy_exports

EXPORTS = {
    "cign_fast.data.audio": ("LogSpectrogram", "load_clip_waveform", "spectrogram_frames"),
    "cign_fast.data.benchmarks": (
        "BENCHMARK_NAMES",
        "benchmark_tasks",
        "class_order_from_file",
        "class_order_of_first_appearance",
        "shuffled_class_order",
        "split_classes",
    ),
    "cign_fast.data.cache": ("CorruptShardError",),
    "cign_fast.data.clips": ("ClipDataset",),
    "cign_fast.data.features": ("FeatureDataset",),
    "cign_fast.data.fsdd": ("fsdd_class_names", "write_fsdd_digits_dataset"),
    "cign_fast.data.labels": ("SPLITS", "LabelRow", "LabelsFileError", "read_labels", "vggsound_clip_id"),
    "cign_fast.data.skips": (
        "SKIP_REASONS",
        "ClipDecodeError",
        "SkippedClipWarning",
        "SkippedItem",
        "SkipReport",
        "collate_skipping",
    ),
    "cign_fast.data.synthetic": (
        "synthetic_class_names",
        "synthetic_confusable_pairs",
        "write_synthetic_dataset",
        "write_synthetic_features",
    ),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(globals(), EXPORTS)

if TYPE_CHECKING:  # the same names, imported for type checkers only (tests/test_install.py holds the two equal)
    from cign_fast.data.audio import LogSpectrogram, load_clip_waveform, spectrogram_frames
    from cign_fast.data.benchmarks import (
        BENCHMARK_NAMES,
        benchmark_tasks,
        class_order_from_file,
        class_order_of_first_appearance,
        shuffled_class_order,
        split_classes,
    )
    from cign_fast.data.cache import CorruptShardError
    from cign_fast.data.clips import ClipDataset
    from cign_fast.data.features import FeatureDataset
    from cign_fast.data.fsdd import fsdd_class_names, write_fsdd_digits_dataset
    from cign_fast.data.labels import SPLITS, LabelRow, LabelsFileError, read_labels, vggsound_clip_id
    from cign_fast.data.skips import (
        SKIP_REASONS,
        ClipDecodeError,
        SkippedClipWarning,
        SkippedItem,
        SkipReport,
        collate_skipping,
    )
    from cign_fast.data.synthetic import (
        synthetic_class_names,
        synthetic_confusable_pairs,
        write_synthetic_dataset,
        write_synthetic_features,
    )
