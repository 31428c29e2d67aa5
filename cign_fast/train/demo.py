"""``cign-fast demo``: the built-in synthetic dataset through the real raw-mode training loop, in minutes on a CPU.

The synthetic classes come in pairs that one modality cannot tell apart (see
:mod:`cign_fast.data.synthetic`), so the audio-visual prediction beats each modality alone.
The defaults below are small (64 px frames, 8 kHz audio, D = 128, depth 1) so the default run fits
in a few minutes on two CPU cores; every one is a flag of the command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the functions import what they run: `cign-fast demo --help` reads DemoOptions without torch
    from cign_fast.train.loop import TrainResults

STAMP_FILE = "synthetic.json"


@dataclass
class DemoOptions:
    out: Path
    data_dir: Path | None = None  # default: OUT/data
    tasks: int = 4
    classes: int = 8
    train_per_class: int = 24
    test_per_class: int = 10
    epochs: int = 4
    batch_size: int = 8
    lr: float = 1e-3
    dim: int = 128
    depth: int = 1
    image_size: int = 64
    sample_rate: int = 8000
    memory_budget: int = 0
    distill: bool = True
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def prepare_synthetic_data(options: DemoOptions, log: Callable[[str], None] = print) -> Path:
    """Write the synthetic dataset once; reuse it when the folder was written with the same parameters."""
    from cign_fast.data import write_synthetic_dataset

    root = options.data_dir if options.data_dir is not None else options.out / "data"
    parameters = {
        "num_classes": options.classes,
        "train_per_class": options.train_per_class,
        "val_per_class": 1,
        "test_per_class": options.test_per_class,
        "image_size": options.image_size,
        "sample_rate": options.sample_rate,
        "seed": options.seed,
    }
    stamp = root / STAMP_FILE
    if stamp.is_file() and json.loads(stamp.read_text()) == parameters and (root / "labels.csv").is_file():
        log(f"using the synthetic dataset in {root}")
        return root
    log(f"writing the synthetic dataset ({options.classes} classes) to {root}")
    write_synthetic_dataset(root, **parameters)
    stamp.write_text(json.dumps(parameters))
    return root


def demo_overrides(options: DemoOptions, data_root: Path) -> dict[str, dict[str, object]]:
    """The demo's configuration (raw mode: the real file loader, CNN encoders and loop)."""
    return {
        "data": {
            "root": str(data_root),
            "input_mode": "raw",
            "tasks": options.tasks,
            "image_size": options.image_size,
            "sample_rate": options.sample_rate,
            "num_workers": 0,
        },
        "model": {"dim": options.dim, "depth": options.depth, "num_heads": 4, "drop_path": 0.0},
        "optim": {
            "lr": options.lr,
            "batch_size": options.batch_size,
            "eval_batch_size": 64,
            "epochs": options.epochs,
            "precise_bn_batches": 8,
        },
        "distill": {"enabled": options.distill},
        "memory": {"budget": options.memory_budget},
        "run": {
            "out": str(options.out),
            "seed": options.seed,
            "device": options.device,
            "keep_checkpoints": 1,
            "epoch_checkpoints": False,
            "progress": options.progress,
        },
    }


def run_demo(options: DemoOptions, log: Callable[[str], None] = print) -> TrainResults:
    """Write the data, train task after task, print the matrices and write OUT/metrics.json and the plots."""
    from cign_fast.train.config import build_config
    from cign_fast.train.loop import train_incremental

    options.out.mkdir(parents=True, exist_ok=True)
    data_root = prepare_synthetic_data(options, log)
    config = build_config(base=demo_overrides(options, data_root))
    return train_incremental(config, overwrite=True, log=log)  # a rerun replaces the earlier demo run's outputs
