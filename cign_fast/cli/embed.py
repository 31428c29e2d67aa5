"""``cign-fast embed``: t-SNE plot of a checkpoint's audio-visual class embeddings, coloured by class."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint written by train or demo")
    parser.add_argument("--data", type=Path, required=True, help="dataset root (or feature cache)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test", help="default: %(default)s")
    parser.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def main(args: argparse.Namespace) -> int:
    from cign_fast.train.embed import embed_checkpoint

    try:
        path = embed_checkpoint(
            args.checkpoint,
            args.data,
            args.out,
            split=args.split,
            batch_size=args.batch_size,
            device=args.device,
            perplexity=args.perplexity,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
