"""``cign-fast eval``: accuracy of a trained checkpoint on a dataset, per task and modality."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by train or demo")
    parser.add_argument("--data", type=Path, required=True, help="dataset root (or feature cache)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", type=Path, help="also write the result to this JSON file")


def main(args: argparse.Namespace) -> int:
    from cign_fast.train.evaluate import evaluate_checkpoint, format_evaluation

    try:
        result = evaluate_checkpoint(
            args.checkpoint, args.data, split=args.split, batch_size=args.batch_size, device=args.device
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_evaluation(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
