"""The run folder (``run.out``): nothing in it is lost to a second run, and a resumed run is the same run.

* **Lock.** A run holds an exclusive ``flock`` on ``OUT/.lock`` (holding its PID) for its whole life;
  a second run on the folder stops at once, naming that PID. The kernel drops the lock when the
  process ends, however it ends, so a crash never leaves the folder locked.
* **Fresh runs.** A run without ``--resume`` refuses a folder that holds an earlier run's outputs
  (:data:`RUN_OUTPUTS`): ``--resume`` continues that run, ``--overwrite`` deletes those outputs first.
  Other files in the folder (e.g. the demo's ``data/``) are never touched.
* **Resume.** ``--resume`` continues only the same run: the settings saved in ``config.yaml`` and the
  data fingerprint saved in ``run.json`` (see :mod:`cign_fast.train.fingerprint`) must match the new
  session's; otherwise it stops naming both values, and neither file is rewritten.

Under torchrun only rank 0 reads or writes the folder; a refusal stops every rank with the same message.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cign_fast.train.checkpoint import write_atomically
from cign_fast.train.config import TrainConfig, load_yaml
from cign_fast.train.datasets import RunData
from cign_fast.train.distributed import DistContext, broadcast_from_main
from cign_fast.train.fingerprint import data_fingerprint, fingerprint_differences, settings_differences

LOCK_FILE = ".lock"
IDENTITY_FILE = "run.json"
CONFIG_FILE = "config.yaml"
RUN_OUTPUTS = (
    CONFIG_FILE,
    IDENTITY_FILE,
    "metrics.json",
    "accuracy.csv",
    "epochs.csv",
    "accuracy_matrices.png",
    "accuracy_steps.png",
    "tensorboard",
    "checkpoints",
)


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (the message says why and what to do)."""


def earlier_outputs(out_dir: Path) -> list[str]:
    """The names of :data:`RUN_OUTPUTS` present in ``out_dir``."""
    return [name for name in RUN_OUTPUTS if (out_dir / name).exists()]


def remove_outputs(out_dir: Path, names: list[str]) -> None:
    for name in names:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class RunFolderLock:
    """An exclusive, non-blocking ``flock`` on ``OUT/.lock`` for as long as the object holds it."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunFolderError` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderError(
                f"run.out: {self.path.parent} is in use by another run (process {holder} holds "
                f"{self.path}); wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class RunFolder:
    """Context manager around one run's use of its folder: lock, fresh/overwrite/resume rules, identity.

    ``with RunFolder(out, context, resume=..., overwrite=...) as folder:`` takes the lock and applies the
    fresh-run rule; ``folder.check_identity(config, data)`` (once the data is loaded) applies the resume
    rule and records ``run.json``; leaving the block releases the lock.
    """

    def __init__(
        self, out_dir: Path, context: DistContext, *, resume: bool, overwrite: bool, log: Callable[[str], None] = print
    ) -> None:
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite exclude each other: continue the run or replace it")
        self.out_dir = Path(out_dir)
        self.context = context
        self.resume = resume
        self.overwrite = overwrite
        self.log = log
        self.lock = RunFolderLock(self.out_dir)

    def __enter__(self) -> RunFolder:
        try:
            self._on_main_rank(self._open)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.lock.release()

    def _on_main_rank(self, action: Callable[[], None]) -> None:
        """``action()`` on rank 0; its refusal is raised on every rank."""
        if not self.context.is_distributed:
            action()
            return
        message = None
        if self.context.is_main:
            try:
                action()
            except (ValueError, OSError) as error:
                message = str(error)
        message = broadcast_from_main(message, self.context)
        if message is not None:
            raise RunFolderError(message)

    def _open(self) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise RunFolderError(f"run.out: {self.out_dir} exists and is not a folder")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as error:
            raise RunFolderError(f"run.out: cannot use {self.out_dir} as the run folder ({error.strerror})") from None
        found = earlier_outputs(self.out_dir)
        if self.resume or not found:
            return
        if not self.overwrite:
            raise RunFolderError(
                f"run.out: {self.out_dir} already holds a run ({', '.join(found)}); pass --resume "
                f"to continue it, --overwrite to replace it, or choose another --out"
            )
        remove_outputs(self.out_dir, found)
        self.log(f"replacing the earlier run in {self.out_dir} (removed {', '.join(found)})")

    def check_identity(self, config: TrainConfig, data: RunData) -> None:
        """On resume, refuse other settings or other data than the run's own; then record ``run.json``."""
        self._on_main_rank(lambda: self._check_and_record(config, data))

    def _check_and_record(self, config: TrainConfig, data: RunData) -> None:
        fingerprint = data_fingerprint(config, data)
        identity_path, config_path = self.out_dir / IDENTITY_FILE, self.out_dir / CONFIG_FILE
        if self.resume and config_path.is_file():
            differences = settings_differences(read_yaml(config_path), config.to_dict())
            if differences:
                raise RunFolderError(
                    f"--resume: {config_path} records other settings than this run's "
                    f"({'; '.join(differences)}); resume with the config saved there"
                )
        if self.resume and identity_path.is_file():
            differences = fingerprint_differences(read_identity(identity_path), fingerprint)
            if differences:
                raise RunFolderError(
                    f"--resume: the run in {self.out_dir} was trained on other data than "
                    f"--data {config.data.root} ({'; '.join(differences)}); resume with the "
                    f"run's own data"
                )
        elif self.resume and earlier_outputs(self.out_dir):
            self.log(
                f"warning: {self.out_dir} has no {IDENTITY_FILE} (written by an older cign_fast): its data "
                f"cannot be checked; recording the current data's fingerprint"
            )
        text = json.dumps({"data": fingerprint}, indent=2) + "\n"
        write_atomically(identity_path, text.encode())


def read_yaml(path: Path) -> dict[str, object]:
    values = load_yaml(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(values, dict):
        raise RunFolderError(f"{path}: expected a mapping of config sections")
    return values


def read_identity(path: Path) -> dict[str, dict[str, object]]:
    """The data fingerprint recorded in ``run.json``."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path} is not valid JSON ({error})") from None
    fingerprint = values.get("data") if isinstance(values, dict) else None
    if not (
        isinstance(fingerprint, dict) and all(isinstance(fingerprint.get(key), dict) for key in ("files", "clips"))
    ):
        raise RunFolderError(f'{path}: expected {{"data": {{"files": {{...}}, "clips": {{...}}}}}}')
    return fingerprint
