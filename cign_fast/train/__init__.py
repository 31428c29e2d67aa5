"""Class-incremental training: one loop (``train_incremental``) behind ``cign-fast demo`` and ``cign-fast train``."""

from cign_fast.train.config import TrainConfig, build_config, config_from_dict
from cign_fast.train.demo import DemoOptions, run_demo
from cign_fast.train.loop import TrainResults, train_incremental

__all__ = ["DemoOptions", "TrainConfig", "TrainResults", "build_config", "config_from_dict", "run_demo",
           "train_incremental"]
