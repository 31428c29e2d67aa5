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
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="comparison folder: compare.md/.json/.png, and the run folders unless --runs",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        help="where the run folders go (default: OUT); comparisons sharing it reuse their common runs",
    )
    parser.add_argument(
        "--methods",
        type=method_list,
        metavar="NAME,NAME,...",
        help=f"comma-separated methods (default: the recipe's, else all that run on the input mode: "
        f"{','.join(METHOD_NAMES)})",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="run seeds (default: the recipe's, else 0)")
    parser.add_argument(
        "--memory-per-class",
        type=int,
        help="exemplars per class for every method that can keep some (default: 0, exemplar-free)",
    )
    parser.add_argument(
        "--required-memory-per-class",
        type=int,
        help="exemplars per class for the methods that need a memory (iCaRL, SS-IL, IL2M, BiC, "
        "PODNet) when --memory-per-class is 0 (default: 20)",
    )
    parser.add_argument(
        "--memory-budget",
        type=int,
        help="exemplars in total (shared by the classes seen) for every method that can keep some, "
        "instead of a number per class (AV-CIL's protocol)",
    )
    add_run_arguments(parser)
    parser.epilog = (
        "--benchmark NAME also takes a recipe of configs/benchmarks/ (a paper's table: its data split, "
        "methods, seeds, memory and epochs); explicit flags override the recipe."
    )


DEFAULTS = {"seeds": [0], "memory_per_class": 0, "required_memory_per_class": 20, "memory_budget": 0}


def main(args: argparse.Namespace) -> int:
    from cign_fast.methods import method_names
    from cign_fast.train.compare import load_recipe, recipe_names, run_compare, runnable_methods
    from cign_fast.train.config import build_config

    try:
        recipe: dict[str, object] = {}
        base: dict[str, object] | None = None
        source = "defaults"
        flags = settings_from_flags(args)
        if args.benchmark is not None and args.benchmark in recipe_names():
            recipe, base, path = load_recipe(args.benchmark)
            source = str(path)
            flags.pop("data.benchmark")  # the recipe sets the data split itself
            print(f"benchmark recipe {path}")
        config = build_config(args.config, args.overrides, base=base, flags=flags, base_source=source)
        given = {key: getattr(args, key) for key in ("methods", *DEFAULTS) if getattr(args, key) is not None}
        settings = {**DEFAULTS, **recipe, **given}
        if "methods" in given:
            methods = given["methods"]
        else:
            methods, skipped = runnable_methods(settings.get("methods", list(method_names())), config.data.input_mode)
            if skipped:
                print(f"skipping {', '.join(skipped)}: not run on {config.data.input_mode!r} inputs")
        run_compare(
            config,
            methods,
            settings["seeds"],
            args.out,
            memory_per_class=settings["memory_per_class"],
            required_memory_per_class=settings["required_memory_per_class"],
            memory_budget=settings["memory_budget"],
            runs_dir=args.runs,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
