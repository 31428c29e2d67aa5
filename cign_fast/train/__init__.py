"""Class-incremental training: one loop (``train_incremental``) behind ``cign-fast demo`` and ``cign-fast train``.

The names below load on first use (:mod:`cign_fast.lazy`).
"""

from typing import TYPE_CHECKING

from cign_fast.lazy import lazy_exports

EXPORTS = {
    "cign_fast.train.config": ("TrainConfig", "build_config", "config_from_dict"),
    "cign_fast.train.demo": ("DemoOptions", "run_demo"),
    "cign_fast.train.loop": ("TrainResults", "train_incremental"),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(globals(), EXPORTS)

if TYPE_CHECKING:  # the same names, imported for type checkers only (tests/test_install.py holds the two equal)
    from cign_fast.train.config import TrainConfig, build_config, config_from_dict
    from cign_fast.train.demo import DemoOptions, run_demo
    from cign_fast.train.loop import TrainResults, train_incremental
