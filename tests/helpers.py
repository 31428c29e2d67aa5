"""Helpers the tests share (fixtures stay in ``conftest.py``).

Backends: which device a backend's tests run on here, and a skip when it cannot run an op.
Trainer: a tiny learnable feature dataset and runners for ``cign-fast train`` / ``compare``.

The features are written in AV-CIL's layout (which ``FeatureDataset`` reads) plus a ``labels.csv``
listing the same clips (from which the trainer takes the class sequence). Each class has its own mean
audio and visual token; classes 2k and 2k+1 share the visual mean, so only audio separates them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cign_fast.cli import train as train_cli
from cign_fast.data.feature_files import write_feature_folder
from cign_fast.data.labels import LabelRow
from cign_fast.train.config import TrainConfig, build_config

REPO = Path(__file__).resolve().parents[1]
ALL_BACKENDS = ("reference", "cpp", "triton", "cuda")
COMPARE_RUNNER = "import sys; from cign_fast.cli import main; sys.exit(main(['compare'] + sys.argv[1:]))"
# ``cign-fast`` that SIGKILLs itself on the N-th call of a trainer method in a run of one method:
# arguments METHOD HOOK N, then the subcommand and its arguments
KILLING_RUNNER = """
import os, signal, sys
from cign_fast.cli import main
from cign_fast.train.loop import IncrementalTrainer
target, hook, fatal_call = sys.argv[1], sys.argv[2], int(sys.argv[3])
original, calls = getattr(IncrementalTrainer, hook), []
def killing(self, *args, **kwargs):
    if self.method.name == target:
        calls.append(hook)
        if len(calls) == fatal_call:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
setattr(IncrementalTrainer, hook, killing)
sys.exit(main(sys.argv[4:]))
"""


def backend_device(name: str) -> torch.device:
    """The device a backend's tests run on here: CUDA when present, else CPU (Triton interpreted)."""
    if name == "cpp":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_backend(name: str, op: str, dtype: torch.dtype = torch.float32) -> torch.device:
    """Skip (saying why) when backend ``name`` cannot run ``op`` on this machine; else its device."""
    from cign_fast.ops.backends import refusal  # not at import: conftest sets TRITON_INTERPRET first

    device = backend_device(name)
    why = refusal(name, op, device, dtype)
    if why is not None:
        pytest.skip(f"backend {name} on {device.type}: {why}")
    return device


def write_feature_dataset(
    root: Path,
    num_classes: int = 6,
    train_per_class: int = 16,
    test_per_class: int = 6,
    audio_shape: tuple[int, int] = (4, 8),
    visual_shape: tuple[int, int] = (3, 6),
    seed: int = 0,
    shared_visual: bool = True,
    noise: float = 0.8,
) -> Path:
    """Write the dataset into ``root`` and return it. ``shared_visual=False``: each class has its own visual mean."""
    rng = np.random.default_rng(seed)
    audio_means = rng.normal(0, 1, (num_classes, audio_shape[1]))
    visual_means = rng.normal(0, 1, (num_classes // 2 + 1 if shared_visual else num_classes, visual_shape[1]))
    visual_class = (lambda cls: cls // 2) if shared_visual else (lambda cls: cls)
    audio, visual, rows = {}, {}, []
    for split, count in (("train", train_per_class), ("val", 1), ("test", test_per_class)):
        for cls in range(num_classes):
            label = f"class_{cls}"
            for index in range(count):
                clip_id = f"{label}_{split}_{index}"
                audio[clip_id] = (audio_means[cls] + rng.normal(0, noise, audio_shape)).astype(np.float32)
                visual[clip_id] = (visual_means[visual_class(cls)] + rng.normal(0, noise, visual_shape)).astype(
                    np.float32
                )
                rows.append(LabelRow(clip_id, label, split))
    return write_feature_folder(root, rows, {"audio": audio, "visual": visual})


def tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``cign-fast train`` arguments for a fast features-mode run (3 tasks of 2 classes, no plots)."""
    return [
        "--data",
        str(data),
        "--out",
        str(out),
        "--input-mode",
        "features",
        "--tasks",
        "3",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        "--set",
        "model.dim=16",
        "--set",
        "model.depth=1",
        "--set",
        "model.num_heads=2",
        "--set",
        "model.drop_path=0.0",
        "--set",
        "optim.eval_batch_size=32",
        "--set",
        "run.tensorboard=false",
        "--set",
        "run.plots=false",
        *extra,
    ]


def tiny_config(data: Path, out: Path, *extra: str) -> TrainConfig:
    """The :class:`TrainConfig` of :func:`tiny_train_args`, for runs inside the test process."""
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    args = parser.parse_args(tiny_train_args(data, out, *extra))
    return build_config(args.config, args.overrides, flags=train_cli.settings_from_flags(args))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from more threads, and a busy machine stalls OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def subprocess_env() -> dict[str, str]:
    """One thread per process so runs in different processes compute bit for bit the same."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    return env


def run_runner(runner: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``python -c runner args`` with one thread, output captured."""
    return subprocess.run(
        [sys.executable, "-c", runner, *args], env=subprocess_env(), cwd=REPO, capture_output=True, text=True, **kwargs
    )


def read_run_results(out: Path) -> tuple[dict, list[float]]:
    """A finished run's metrics.json and its per-epoch losses from epochs.csv."""
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "epochs.csv").open() as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    return metrics, losses
