"""``cign-fast extract``: run the frozen ResNet-18 encoders once over a dataset and write a feature cache."""

from __future__ import annotations

import argparse
import sys

from cign_fast.data.cache import AUDIO_TOKEN_MODES, CACHE_DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root (labels.csv or vggsound.csv, frames/, audio/)")
    parser.add_argument("--out", required=True, help="cache folder (new, empty, or an interrupted cache to resume)")
    parser.add_argument("--visual-weights", default=None, help="local torchvision ResNet-18 .pth for the image encoder")
    parser.add_argument("--audio-weights", default=None, help="local ResNet-18 .pth for the spectrogram encoder")
    parser.add_argument(
        "--audio-tokens",
        choices=AUDIO_TOKEN_MODES,
        default="map",
        help="audio token map (default) or one max-pooled token (the authors' variant)",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--shard-size", type=int, default=256, help="clips per shard file")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--dtype", choices=CACHE_DTYPES, default="float16", help="storage type of the features")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0, help="initialisation of encoders given no weights file")


def main(args: argparse.Namespace) -> int:
    import torch

    from cign_fast.data.extract import build_frozen_encoders, describe_encoders, extract_features

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.visual_weights is None or args.audio_weights is None:
        print(
            "warning: without --visual-weights / --audio-weights the encoders are randomly initialised "
            "(features from them are only useful for testing)",
            file=sys.stderr,
        )
    options = dict(
        audio_weights=args.audio_weights,
        visual_weights=args.visual_weights,
        audio_tokens=args.audio_tokens,
        seed=args.seed,
    )
    try:
        result = extract_features(
            args.data,
            args.out,
            build_frozen_encoders(**options),
            describe_encoders(**options),
            image_size=args.image_size,
            sample_rate=args.sample_rate,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            num_workers=args.workers,
            dtype=args.dtype,
            device=device,
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    per_split = ", ".join(f"{split} {count}" for split, count in result.clips.items())
    print(
        f"feature cache {result.cache_dir}: clips {per_split}; shards written {result.shards_written}, "
        f"kept from an earlier run {result.shards_kept}"
    )
    print(result.skips.summary())
    return 0
