"""Class-incremental training: one loop (``train_incremental``) behind ``cign-fast demo`` and ``cign-fast train``.

The names below load on first use (:mod:`cign_fast.lazy`).
"""

from cign_fast.lazy import lazy_exports

EXPORTS = {
    "cign_fast.train.config": ("TrainConfig", "build_config", "config_from_dict"),
    "cign_fast.train.demo": ("DemoOptions", "run_demo"),
    "cign_fast.train.loop": ("TrainResults", "train_incremental"),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(globals(), EXPORTS)
