"""``cign-fast train``: class-incremental training of one method from YAML configs plus command-line overrides.

Precedence: defaults < ``--config FILE`` (repeatable, later files win) < the explicit flags below
< ``--set section.key=value``.
Under ``torchrun --nproc_per_node=K`` it runs DDP; a plain run is a single process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# the registered methods (cign_fast.methods, which imports torch: --help must not); a test holds them equal
METHOD_NAMES = (
    "cign",
    "finetune",
    "joint",
    "ewc",
    "lwf",
    "icarl",
    "ssil",
    "il2m",
    "bic",
    "podnet",
    "afc",
    "l2p",
    "avcil",
)
# flag attribute -> config key (flags not given are left unset)
FLAG_KEYS = {
    "method": "method",
    "data": "data.root",
    "out": "run.out",
    "benchmark": "data.benchmark",
    "tasks": "data.tasks",
    "class_order": "data.class_order",
    "input_mode": "data.input_mode",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "memory_budget": "memory.budget",
    "memory_per_class": "memory.per_class",
    "memory_selection": "memory.selection",
    "seed": "run.seed",
    "device": "run.device",
    "workers": "data.num_workers",
}
# switch attribute -> (config key, value when the switch is given)
SWITCH_KEYS = {
    "shuffle_classes": ("data.shuffle_classes", True),
    "deterministic": ("run.deterministic", True),
    "no_distill": ("distill.enabled", False),
    "no_progress": ("run.progress", False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="dataset root (labels.csv, frames/, audio/) or feature cache")
    parser.add_argument("--out", type=Path, help="output directory (config, checkpoints, metrics, plots)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from its newest intact checkpoint (same settings, seed and data)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run's outputs in OUT (without it a fresh run refuses a used OUT)",
    )
    parser.add_argument(
        "--method",
        choices=METHOD_NAMES,
        help="continual-learning method (default: cign); its settings are in its config section",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--memory-budget", type=int, help="exemplar memory size in clips (0: none)")
    parser.add_argument("--memory-per-class", type=int, help="exemplars per class instead of a total budget")
    add_run_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings shared by ``train`` and ``compare`` (all but the output, method, seed and memory size)."""
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="YAML config file (see configs/ and configs/methods/); repeatable, later files win",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    parser.add_argument(
        "--benchmark",
        help="preset: vggsound-instruments (4x9), vggsound100 (--tasks 10 or 4), "
        "vgg-ss (220 classes, list from --class-order); default: the data's labels",
    )
    parser.add_argument("--tasks", type=int, help="number of tasks (custom split, or a preset's variant)")
    parser.add_argument("--class-order", type=Path, help="file with one class name per line (vgg-ss: its class list)")
    parser.add_argument("--shuffle-classes", action="store_true", help="shuffle the class order with --seed")
    parser.add_argument("--input-mode", choices=("raw", "features"), help="raw clips or pre-extracted features")
    parser.add_argument("--epochs", type=int, help="epochs per task")
    parser.add_argument("--batch-size", type=int, help="global batch size (split over the processes)")
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument("--memory-selection", choices=("herding", "random"))
    parser.add_argument("--no-distill", action="store_true", help="CIGN: train without class-token distillation")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--workers", type=int, help="DataLoader worker processes per rank")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def settings_from_flags(args: argparse.Namespace) -> dict[str, object]:
    """``{"section.key": value}`` for the explicit flags that were given."""
    settings = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name, None) is not None}
    settings.update(setting for name, setting in SWITCH_KEYS.items() if getattr(args, name))
    return settings


def main(args: argparse.Namespace) -> int:
    from cign_fast.train.config import build_config
    from cign_fast.train.loop import train_incremental

    try:
        config = build_config(args.config, args.overrides, flags=settings_from_flags(args))
        train_incremental(config, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
