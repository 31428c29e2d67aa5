"""Atomic, self-checking checkpoints and the RNG states that make a resumed run repeat the original.

File layout: the ``torch.save`` payload, then ``MAGIC`` and the payload's SHA-256. A file that was cut
short or damaged fails the check and is reported by name; :func:`load_latest_checkpoint` then falls
back to the previous one. Writes are atomic (:func:`cign_fast.files.write_atomically`).
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cign_fast.files import write_atomically
from cign_fast.methods import ContinualMethod, build_method
from cign_fast.model import ModelConfig
from cign_fast.train.config import config_from_dict

CHECKPOINT_FORMAT = 2  # 2: the method's name in the config and its state under "method"
MAGIC = b"CIGNCKPT"
DIGEST_BYTES = 32
NAME_PATTERN = re.compile(r"^checkpoint-(\d{6})-task(\d+)-(epoch\d+|done)\.pt$")


class CorruptCheckpoint(ValueError):
    """The file is truncated, damaged or not a cign_fast checkpoint."""


def checkpoint_name(sequence: int, task: int, epoch: int | None) -> str:
    """``checkpoint-000007-task1-epoch3.pt``, or ``...-task1-done.pt`` once the task is evaluated."""
    return f"checkpoint-{sequence:06d}-task{task}-{'done' if epoch is None else f'epoch{epoch}'}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (by sequence number)."""
    if not directory.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in directory.iterdir()
        if (match := NAME_PATTERN.match(path.name)) is not None
    ]
    return [path for _, path in sorted(found)]


def checkpoint_sequence(path: Path) -> int:
    match = NAME_PATTERN.match(path.name)
    if match is None:
        raise ValueError(f"checkpoint: {path.name} does not follow the checkpoint-NNNNNN-... naming")
    return int(match.group(1))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` with a digest trailer and write it atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    write_atomically(path, payload, MAGIC, hashlib.sha256(payload).digest())
    payload.release()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint; :class:`CorruptCheckpoint` names the file when it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    data = memoryview(path.read_bytes())
    trailer_size = len(MAGIC) + DIGEST_BYTES
    if len(data) <= trailer_size or bytes(data[-trailer_size:-DIGEST_BYTES]) != MAGIC:
        raise CorruptCheckpoint(f"checkpoint {path} is truncated or not a cign_fast checkpoint (no end marker)")
    payload = data[:-trailer_size]
    if hashlib.sha256(payload).digest() != bytes(data[-DIGEST_BYTES:]):
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt (its SHA-256 does not match)")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None


def load_latest_checkpoint(
    directory: Path,
    report: Callable[[str], None] = print,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that reads back intact (each bad one is reported by name), or ``None``."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path, map_location), path
        except CorruptCheckpoint as err:
            report(f"warning: {err}; falling back to the previous checkpoint")
    return None


class RunCheckpoints:
    """The checkpoints this run wrote or verified, oldest first: the only ones it prunes or names as final.

    :meth:`adopt` (on resume) takes the checkpoint that read back intact and the older ones of the same
    run; the newer ones, rejected as damaged, are renamed ``NAME.rejected`` so that no later resume tries
    them again and no pruning weighs them, and a killed write's temporary files are removed.
    :meth:`save` writes a checkpoint and deletes all but the newest ``keep`` of the run's own.
    ``enabled`` false (ranks other than 0): nothing is read, written or deleted.
    """

    def __init__(self, directory: Path, keep: int, enabled: bool) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.enabled = enabled
        self.paths: list[Path] = []

    @property
    def newest(self) -> Path | None:
        return self.paths[-1] if self.paths else None

    def adopt(self, resumed_from: Path | None, report: Callable[[str], None] = print) -> None:
        """Adopt ``resumed_from`` and its predecessors; set aside every later one (all, when ``None``)."""
        if not self.enabled:
            return
        last = -1 if resumed_from is None else checkpoint_sequence(resumed_from)
        for path in list_checkpoints(self.directory):
            if checkpoint_sequence(path) <= last:
                self.paths.append(path)
                continue
            target = path.with_name(path.name + ".rejected")
            path.replace(target)
            report(f"set aside the unreadable checkpoint {path.name} as {target.name}")
        for leftover in self.directory.glob(".*.tmp-*"):
            leftover.unlink(missing_ok=True)

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write checkpoint ``name`` (see :func:`save_checkpoint`), then prune the run's older ones."""
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        save_checkpoint(path, state)
        self.paths = [known for known in self.paths if known != path] + [path]
        for old in self.paths[: -self.keep]:
            old.unlink(missing_ok=True)
        self.paths = self.paths[-self.keep :]


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python RNG states, in a ``weights_only``-loadable form."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    np.random.set_state(
        (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"], saved["has_gauss"], saved["cached"])
    )
    saved = state["python"]
    random.setstate((saved["version"], tuple(saved["state"]), saved["gauss"]))


def load_trained_model(
    path: str | Path,
    device: torch.device | str = "cpu",
) -> tuple[ContinualMethod, nn.Module, dict[str, Any]]:
    """The method (its state restored) and model (eval mode) of a training checkpoint, and the checkpoint itself."""
    state = load_checkpoint(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint: {path} has format {state.get('format')!r}; this version reads training "
            f"checkpoints of format {CHECKPOINT_FORMAT}"
        )
    for key in ("model_config", "task_sizes", "model", "method", "class_tasks", "config"):
        if key not in state:
            raise ValueError(f"checkpoint: {path} is not a cign_fast training checkpoint (no {key!r})")
    method = build_method(config_from_dict(state["config"]), ModelConfig(**state["model_config"]))
    model = method.rebuild_model(state["task_sizes"], state["model"], device)
    method.load_state_dict(state["method"], device)
    return method, model.eval(), state
