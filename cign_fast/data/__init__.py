"""Data: synthetic and real audio-visual clip datasets, labels, benchmark presets, feature caches.

Feature extraction (``cign_fast.data.extract``) is imported on its own: it needs the model's encoders.
"""

from cign_fast.data.audio import LogSpectrogram, load_clip_waveform, spectrogram_frames
from cign_fast.data.benchmarks import (
    BENCHMARK_NAMES, benchmark_tasks, class_order_from_file, class_order_of_first_appearance, shuffled_class_order,
    split_classes,
)
from cign_fast.data.cache import CorruptShardError
from cign_fast.data.clips import ClipDataset
from cign_fast.data.features import FeatureDataset
from cign_fast.data.fsdd import fsdd_class_names, write_fsdd_digits_dataset
from cign_fast.data.labels import SPLITS, LabelRow, LabelsFileError, read_labels, vggsound_clip_id
from cign_fast.data.skips import (
    SKIP_REASONS, ClipDecodeError, SkippedClipWarning, SkippedItem, SkipReport, collate_skipping,
)
from cign_fast.data.synthetic import synthetic_class_names, synthetic_confusable_pairs, write_synthetic_dataset

__all__ = [
    "BENCHMARK_NAMES", "ClipDataset", "ClipDecodeError", "CorruptShardError", "FeatureDataset", "LabelRow",
    "LabelsFileError", "LogSpectrogram", "SKIP_REASONS", "SPLITS", "SkipReport", "SkippedClipWarning", "SkippedItem",
    "benchmark_tasks", "class_order_from_file", "class_order_of_first_appearance", "collate_skipping",
    "fsdd_class_names", "load_clip_waveform", "read_labels", "shuffled_class_order", "spectrogram_frames",
    "split_classes", "synthetic_class_names", "synthetic_confusable_pairs", "vggsound_clip_id",
    "write_fsdd_digits_dataset", "write_synthetic_dataset",
]
