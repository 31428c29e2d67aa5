"""Messages, not tracebacks: malformed YAML, a full disk (and the resume after it), unwritable extraction
folders, a finished read-only cache, bad seeds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from cign_fast.cli import main
from cign_fast.data import write_synthetic_dataset
from cign_fast.data.extract import build_frozen_encoders, extract_features
from cign_fast.train.checkpoint import list_checkpoints
from cign_fast.train.config import RunConfig, TrainConfig
from cign_fast.train.loop import train_incremental

from helpers import one_thread, tiny_train_args, write_feature_dataset

EXTRACT = ["--image-size", "32", "--sample-rate", "8000", "--workers", "0", "--device", "cpu"]


def test_malformed_yaml_is_named_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("optim:\n  lr: [1e-3\nrun: {seed: 1\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert f"error: --config {config}: not valid YAML" in capsys.readouterr().err
    assert main(["train", "--set", "optim.lr=[", "--out", str(tmp_path / "run")]) == 2
    assert "error: --set optim.lr=[: not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_full_disk_stops_with_a_message_and_the_run_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_feature_dataset(tmp_path / "data")
    args = tiny_train_args(data, tmp_path / "run", "--tasks", "2", "--epochs", "1")
    real_fsync, checkpoint_writes = os.fsync, []

    def fsync_until_the_disk_fills(fd: int) -> None:  # the third checkpoint finds the disk full
        if ".checkpoint-" in os.readlink(f"/proc/self/fd/{fd}"):
            checkpoint_writes.append(fd)
            if len(checkpoint_writes) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr("cign_fast.files.os.fsync", fsync_until_the_disk_fills)
    with one_thread():
        assert main(["train", *args]) == 2
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (
        f"error: [Errno 28] cannot write {checkpoints / 'checkpoint-000003-task1-epoch1.pt'} (No space left on device)"
    ) in capsys.readouterr().err
    assert sorted(path.name for path in checkpoints.iterdir()) == [path.name for path in list_checkpoints(checkpoints)]
    assert len(list_checkpoints(checkpoints)) == 2  # nothing half-written is left behind
    monkeypatch.undo()
    with one_thread():
        assert main(["train", *args, "--resume"]) == 0
    assert "resumed from checkpoint-000002-task0-done.pt" in capsys.readouterr().out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("clips"),
        num_classes=2,
        train_per_class=2,
        val_per_class=1,
        test_per_class=1,
        image_size=32,
        sample_rate=8000,
    )


def test_extract_into_an_unwritable_folder_is_a_message(
    clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["extract", "--data", str(clips), "--out", str(blocker / "cache"), *EXTRACT]) == 2
    assert f"error: [Errno 20] Not a directory: '{blocker / 'cache'}'" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("cign_fast.data.cache.write_atomically", read_only)
    assert main(["extract", "--data", str(clips), "--out", str(tmp_path / "cache"), *EXTRACT]) == 2
    assert "error: [Errno 30] Read-only file system" in capsys.readouterr().err


class PooledTokens(torch.nn.Module):
    """A cheap stand-in encoder: [B, C, H, W] -> [B, 4, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(2).transpose(1, 2)


def test_rerunning_extract_on_a_finished_read_only_cache_writes_nothing(
    clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    encoders = {"audio": PooledTokens(), "visual": PooledTokens()}
    options = {"image_size": 32, "sample_rate": 8000, "progress": False}
    extract_features(clips, cache, encoders, {"name": "pooled"}, **options)
    manifest = (cache / "manifest.json").read_bytes()
    monkeypatch.setattr(
        "cign_fast.data.cache.write_atomically", lambda *args: pytest.fail("a finished cache was written to")
    )
    again = extract_features(clips, cache, encoders, {"name": "pooled"}, **options)
    assert again.shards_written == 0 and again.shards_kept == 3 and again.clips == {"train": 4, "val": 2, "test": 2}
    assert (cache / "manifest.json").read_bytes() == manifest


@pytest.mark.parametrize("seed, error", [(1.5, TypeError), ("x", TypeError), (True, TypeError), (-1, ValueError)])
def test_bad_seeds_are_refused_naming_seed(seed: object, error: type, tmp_path: Path) -> None:
    with pytest.raises(error, match=rf"^seed: expected an int >= 0, got {seed!r}"):
        write_synthetic_dataset(
            tmp_path, num_classes=2, train_per_class=1, val_per_class=1, test_per_class=1, image_size=32, seed=seed
        )
    with pytest.raises(error, match="^seed: expected an int >= 0"):
        build_frozen_encoders(seed=seed)
    with pytest.raises(ValueError, match=r"train_incremental\(config\): config run\.seed: expected"):
        train_incremental(TrainConfig(run=RunConfig(out=str(tmp_path / "run"), seed=seed)))
