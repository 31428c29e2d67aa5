"""``cign-fast``: one subcommand per module in this package (``add_arguments`` + ``main``)."""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = {
    "info": "versions and which backends can run here (and why not)",
    "demo": "train CIGN over incremental tasks on built-in synthetic audio-visual data",
    "train": "class-incremental training of one method on your data (one process or torchrun)",
    "compare": "several methods x seeds on one dataset: a table (mean +- std) and accuracy curves",
    "eval": "re-evaluate a checkpoint on a dataset",
    "embed": "t-SNE of the audio-visual class embeddings of a checkpoint",
    "extract": "run the frozen encoders once and write a feature cache",
    "bench": "benchmarks: fused ops (`bench ops`) and the training step (`bench step`)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cign-fast", description="CIGN continual audio-visual learning, fused.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"cign_fast.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"cign_fast.cli.{name}":
                raise
            continue  # a subcommand not shipped in this build
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(entry=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.entry(args) or 0)

