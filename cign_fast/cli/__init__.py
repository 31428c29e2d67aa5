"""``cign-fast``: one subcommand per module in this package (``add_arguments`` + ``main``).

Only the chosen subcommand's module is imported, and those modules import their heavy dependencies
(torch, the model, benchmarks, Triton, matplotlib) inside ``main``: ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s arguments are added (its module imported), the others are listed."""
    parser = argparse.ArgumentParser(prog="cign-fast", description="CIGN continual audio-visual learning, fused.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"cign_fast.cli.{name}")
            module.add_arguments(sub)
            sub.set_defaults(entry=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args.entry(args) or 0)
