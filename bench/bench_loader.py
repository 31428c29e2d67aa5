"""Loader throughput: decoded clips/s of ClipDataset with 0, 1, 2 DataLoader workers on synthetic clips
(224 px JPEG frames, 3 s 16 kHz WAV audio, train transforms), and clips/s of FeatureDataset on a feature
cache extracted from the same clips.

Writes ``cpu-loader.json`` and ``cpu-loader.md`` into ``--out`` (default ``bench-results`` in the working
directory). A benchmark, not a test: numbers depend on the machine and on what else runs on it.

    python -m cign_fast.bench.bench_loader [--classes 8] [--clips-per-class 32] [--passes 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy
import PIL
import soundfile
import torch
import torchaudio
import torchvision
from torch.utils.data import DataLoader, Dataset

from cign_fast.bench.common import RESULTS, cpu_name
from cign_fast.data import ClipDataset, FeatureDataset, collate_skipping, synthetic_class_names, write_synthetic_dataset
from cign_fast.data.extract import build_frozen_encoders, describe_encoders, extract_features


def clips_per_second(dataset: Dataset, batch_size: int, num_workers: int, passes: int) -> float:
    """Clips delivered per second over ``passes`` full passes (worker start-up included, as in training)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_skipping,
        generator=torch.Generator().manual_seed(0),
    )
    start, delivered = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            delivered += len(batch["id"])
    return delivered / (time.perf_counter() - start)


def environment() -> dict[str, object]:
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"CPU: {cpu_name()}, {os.cpu_count()} logical cores",
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
            "soundfile": soundfile.__version__,
            "pillow": PIL.__version__,
        },
        "platform": platform.platform(),
    }


def markdown(report: dict) -> str:
    env, setup = report["environment"], report["setup"]
    lines = [
        "# CPU loader throughput",
        "",
        f"- date (UTC): {env['date_utc']}",
        f"- device: {env['device']}; torch threads {env['torch_threads']}",
        "- versions: " + ", ".join(f"{name} {version}" for name, version in env["versions"].items()),
        f"- data: {setup['clips']} synthetic clips ({setup['classes']} classes), frames {setup['frame_px']} px JPEG, "
        f"audio {setup['audio_seconds']} s at {setup['audio_rate']} Hz; train transforms, "
        f"image_size {setup['image_size']}; batch {setup['batch_size']} ({setup['feature_batch_size']} for features); "
        f"{setup['passes']} passes ({setup['feature_passes']} for features), worker start-up included "
        "(a new DataLoader per pass, as the trainer makes one per epoch)",
        "",
        "| loader | workers | main-process torch threads | clips/s |",
        "|---|---:|---:|---:|",
    ]
    for row in report["results"]:
        lines.append(f"| {row['loader']} | {row['workers']} | {row['main_torch_threads']} | {row['clips_per_s']:.1f} |")
    lines += [
        "",
        f"Feature extraction (random ResNet-18 trunks, CPU, float16 cache): "
        f"{report['extraction_clips_per_s']:.1f} clips/s.",
        "",
        "With 0 workers the clips are decoded in the main process, with its torch thread count: small "
        "ops (STFT, image resize) can run much slower multi-threaded than on one thread on a busy machine. "
        "DataLoader workers use one thread each.",
        "",
        "The machine may be shared with other jobs: treat the numbers as indicative.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--clips-per-class", type=int, default=32)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--feature-passes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--feature-batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: ./{RESULTS})")
    args = parser.parse_args()
    setup = {
        "classes": args.classes,
        "clips": args.classes * args.clips_per_class,
        "frame_px": 224,
        "audio_seconds": 3.0,
        "audio_rate": 16000,
        "image_size": 224,
        "batch_size": args.batch_size,
        "feature_batch_size": args.feature_batch_size,
        "passes": args.passes,
        "feature_passes": args.feature_passes,
    }
    names = synthetic_class_names(args.classes)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = write_synthetic_dataset(
            Path(scratch) / "clips",
            num_classes=args.classes,
            train_per_class=args.clips_per_class,
            val_per_class=1,
            test_per_class=1,
            image_size=224,
            sample_rate=16000,
            seconds=3.0,
        )
        clips = ClipDataset(root, "train", names, train=True, image_size=224, sample_rate=16000)
        default_threads = torch.get_num_threads()
        for workers, threads in ((0, default_threads), (0, 1), (1, 1), (2, 1)):
            # DataLoader workers always run with one torch thread; ``threads`` is the main process's setting.
            torch.set_num_threads(threads)
            rate = clips_per_second(clips, args.batch_size, workers, args.passes)
            results.append(
                {
                    "loader": "ClipDataset (decode + transforms)",
                    "workers": workers,
                    "main_torch_threads": threads,
                    "clips_per_s": rate,
                }
            )
            print(f"ClipDataset, {workers} workers, main threads {threads}: {rate:.1f} clips/s", flush=True)
        torch.set_num_threads(default_threads)

        start = time.perf_counter()
        extraction = extract_features(
            root,
            Path(scratch) / "cache",
            build_frozen_encoders(seed=0),
            describe_encoders(seed=0),
            image_size=224,
            sample_rate=16000,
            batch_size=32,
            num_workers=1,
            dtype="float16",
            progress=False,
        )
        extraction_rate = sum(extraction.clips.values()) / (time.perf_counter() - start)
        print(f"extraction: {extraction_rate:.1f} clips/s", flush=True)
        features = FeatureDataset(Path(scratch) / "cache", "train", names)
        setup["feature_shapes"] = {"audio": list(features.audio_shape), "visual": list(features.visual_shape)}
        for workers in (0, 2):
            rate = clips_per_second(features, args.feature_batch_size, workers, args.feature_passes)
            results.append(
                {
                    "loader": "FeatureDataset (float16 cache, mmap)",
                    "workers": workers,
                    "main_torch_threads": default_threads,
                    "clips_per_s": rate,
                }
            )
            print(f"FeatureDataset, {workers} workers: {rate:.1f} clips/s", flush=True)

    report = {
        "environment": environment(),
        "setup": setup,
        "results": results,
        "extraction_clips_per_s": extraction_rate,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu-loader.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "cpu-loader.md").write_text(markdown(report))
    print(f"wrote {args.out / 'cpu-loader.json'} and {args.out / 'cpu-loader.md'}")


if __name__ == "__main__":
    main()
