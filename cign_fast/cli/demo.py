"""``cign-fast demo``: train CIGN on the built-in synthetic dataset and print the accuracy matrices."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from cign_fast.train.demo import DemoOptions

DEFAULTS = {f.name: f.default for f in fields(DemoOptions)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (metrics.json, plots, checkpoints)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where to write (or reuse) the synthetic dataset (default: OUT/data)",
    )
    parser.add_argument("--tasks", type=int, default=DEFAULTS["tasks"], help="number of tasks (default: %(default)s)")
    parser.add_argument(
        "--classes",
        type=int,
        default=DEFAULTS["classes"],
        help="synthetic classes, split evenly over the tasks (default: %(default)s)",
    )
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=DEFAULTS["train_per_class"],
        help="training clips per class (default: %(default)s)",
    )
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=DEFAULTS["test_per_class"],
        help="test clips per class (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="epochs per task (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=DEFAULTS["dim"], help="model width D (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=DEFAULTS["depth"], help="transformer depth (default: %(default)s)")
    parser.add_argument(
        "--image-size", type=int, default=DEFAULTS["image_size"], help="frame size in px (default: %(default)s)"
    )
    parser.add_argument(
        "--sample-rate", type=int, default=DEFAULTS["sample_rate"], help="audio rate in Hz (default: %(default)s)"
    )
    parser.add_argument(
        "--memory-budget",
        type=int,
        default=DEFAULTS["memory_budget"],
        help="exemplar memory size in clips, 0 = none (default: %(default)s)",
    )
    parser.add_argument("--no-distill", action="store_true", help="train without the class-token distillation")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="default: %(default)s")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=DEFAULTS["device"],
        help="default: %(default)s (cuda when visible)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from cign_fast.train.demo import run_demo

    options = DemoOptions(
        out=args.out,
        data_dir=args.data_dir,
        tasks=args.tasks,
        classes=args.classes,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        dim=args.dim,
        depth=args.depth,
        image_size=args.image_size,
        sample_rate=args.sample_rate,
        memory_budget=args.memory_budget,
        distill=not args.no_distill,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    try:
        results = run_demo(options)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"metrics: {results.out_dir / 'metrics.json'}; heatmaps: {results.out_dir / 'accuracy_matrices.png'}")
    return 0
