"""``cign-fast compare``: several methods x seeds on one dataset and config; writes compare.md, .json and .png.

Each run is a normal, resumable run folder ``RUNS/<method>[-memory<k>]/seed<seed>`` (``RUNS``: ``--runs``, default
OUT); run the same command again after a crash and it continues where it stopped. Under ``torchrun`` every
run is a DDP run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cign_fast.cli.train import METHOD_NAMES, add_run_arguments, settings_from_flags


def method_list(text: str) -> list[str]:
    """``"cign,ewc"`` -> ``["cign", "ewc"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset root or feature cache")
    parser.add_argument("--out", type=Path, required=True,
                        help="comparison folder: compare.md/.json/.png, and the run folders unless --runs")
    parser.add_argument("--runs", type=Path,
                        help="where the run folders go (default: OUT); comparisons sharing it reuse their common runs")
    parser.add_argument("--methods", type=method_list, default=list(METHOD_NAMES), metavar="NAME,NAME,...",
                        help=f"comma-separated methods (default: all: {','.join(METHOD_NAMES)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (default: 0)")
    parser.add_argument("--memory-per-class", type=int, default=0,
                        help="exemplars per class for every method that can keep some (default: 0, exemplar-free)")
    parser.add_argument("--required-memory-per-class", type=int, default=20,
                        help="exemplars per class for the methods that need a memory (iCaRL, SS-IL) when "
                             "--memory-per-class is 0 (default: %(default)s)")
    add_run_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from cign_fast.train.compare import run_compare
    from cign_fast.train.config import build_config

    try:
        base = build_config(args.config, args.overrides, flags=settings_from_flags(args))
        run_compare(base, args.methods, args.seeds, args.out, memory_per_class=args.memory_per_class,
                    required_memory_per_class=args.required_memory_per_class, runs_dir=args.runs)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
