"""Run folders keep their results: a fresh run never writes over an earlier one, two runs never share a
folder, a resume continues only the same run, and only the run's own checkpoints are pruned or named."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pytest

from cign_fast.train.checkpoint import list_checkpoints, load_checkpoint
from cign_fast.train.loop import train_incremental
from cign_fast.train.run_folder import RUN_OUTPUTS, RunFolderError, RunFolderLock

from helpers import one_thread, tiny_config, write_feature_dataset

QUIET = {"log": lambda message: None}
FAST = ("--tasks", "2", "--epochs", "1")  # 2 tasks of 3 classes, 4 checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, out) of one tiny finished run; tests copy ``out`` before changing it."""
    root = tmp_path_factory.mktemp("run_folder")
    data = write_feature_dataset(root / "data")
    with one_thread():
        train_incremental(tiny_config(data, root / "run", *FAST), **QUIET)
    return data, root / "run"


def copy_run(finished_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    data, out = finished_run
    shutil.copytree(out, tmp_path / "run")
    return data, tmp_path / "run"


def test_a_run_writes_only_the_listed_outputs(finished_run: tuple[Path, Path]) -> None:
    _data, out = finished_run
    assert {path.name for path in out.iterdir()} <= set(RUN_OUTPUTS) | {".lock"}
    assert {"config.yaml", "run.json", "metrics.json", "checkpoints"} <= {path.name for path in out.iterdir()}


def test_fresh_run_into_a_used_folder_is_refused_and_overwrite_replaces_it(finished_run, tmp_path: Path) -> None:
    data, out = copy_run(finished_run, tmp_path)
    (out / "notes.txt").write_text("mine")
    metrics = (out / "metrics.json").read_bytes()
    with pytest.raises(
        RunFolderError,
        match=r"already holds a run \(config\.yaml, run\.json, metrics\.json.*--resume.*"
        r"--overwrite",
    ):
        train_incremental(tiny_config(data, out, *FAST), **QUIET)
    assert (out / "metrics.json").read_bytes() == metrics
    with pytest.raises(RunFolderError, match="exclude each other"):
        train_incremental(tiny_config(data, out, *FAST), resume=True, overwrite=True, **QUIET)

    messages: list[str] = []
    with one_thread():
        train_incremental(tiny_config(data, out, "--tasks", "1", "--epochs", "1"), overwrite=True, log=messages.append)
    assert any("replacing the earlier run" in message for message in messages)
    assert (out / "notes.txt").read_text() == "mine"  # not an output of the run: left alone
    names = [path.name for path in list_checkpoints(out / "checkpoints")]
    assert names == ["checkpoint-000001-task0-epoch1.pt", "checkpoint-000002-task0-done.pt"]  # none of the old run's


def hold_lock(out: Path, locked, release) -> None:
    lock = RunFolderLock(out)
    lock.acquire()
    locked.set()
    release.wait(60)
    lock.release()


def test_a_second_run_on_a_locked_folder_names_the_holder(tmp_path: Path) -> None:
    data = write_feature_dataset(tmp_path / "data", num_classes=2, train_per_class=2, test_per_class=1)
    out = tmp_path / "run"
    out.mkdir()
    context = multiprocessing.get_context("fork")
    locked, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(out, locked, release))
    holder.start()
    try:
        assert locked.wait(60)
        with pytest.raises(RunFolderError, match=rf"in use by another run \(process {holder.pid} holds .*\.lock\)"):
            train_incremental(tiny_config(data, out), **QUIET)
        with pytest.raises(RunFolderError, match=f"process {holder.pid}"):
            train_incremental(tiny_config(data, out), resume=True, **QUIET)
    finally:
        release.set()
        holder.join(60)
    assert [path.name for path in out.iterdir()] == [".lock"]  # the refused runs wrote nothing


@pytest.mark.parametrize(
    "change, match",
    [
        (("--seed", "1"), r"run\.seed: 0 there, 1 here"),
        (("--lr", "0.01"), r"optim\.lr: 0\.003 there, 0\.01 here"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_both(finished_run, tmp_path: Path, change, match) -> None:
    data, out = copy_run(finished_run, tmp_path)
    saved = (out / "config.yaml").read_text()
    with pytest.raises(RunFolderError, match=match):
        train_incremental(tiny_config(data, out, *FAST, *change), resume=True, **QUIET)
    assert (out / "config.yaml").read_text() == saved


def test_resume_with_other_data_is_refused_naming_both(finished_run, tmp_path: Path) -> None:
    data, out = copy_run(finished_run, tmp_path)
    same_classes = write_feature_dataset(tmp_path / "other", seed=1)  # same ids and labels, other features
    saved = (out / "run.json").read_text()
    with pytest.raises(
        RunFolderError,
        match=r"other data .*audio_pretrained_feature_dict\.npy sha256 \w{12} there, "
        r"sha256 \w{12} here",
    ):
        train_incremental(tiny_config(same_classes, out, *FAST), resume=True, **QUIET)
    fewer_clips = write_feature_dataset(tmp_path / "fewer", train_per_class=15)
    with pytest.raises(RunFolderError, match="train clips: 96 there, 90 here"):
        train_incremental(tiny_config(fewer_clips, out, *FAST), resume=True, **QUIET)
    assert (out / "run.json").read_text() == saved
    moved = shutil.copytree(data, tmp_path / "moved")  # the same data elsewhere: data.root does not matter
    messages: list[str] = []
    with one_thread():
        train_incremental(tiny_config(moved, out, *FAST), resume=True, log=messages.append)
    assert any("resumed from checkpoint-" in message for message in messages)


def test_rejected_checkpoints_are_set_aside_never_named_final(finished_run, tmp_path: Path) -> None:
    data, out = copy_run(finished_run, tmp_path)
    checkpoints = out / "checkpoints"
    newest = list_checkpoints(checkpoints)[-1]
    stray = checkpoints / "checkpoint-000099-task1-done.pt"
    stray.write_bytes(b"not a checkpoint")
    (checkpoints / f".{newest.name}.tmp-12345").write_bytes(b"half-written")  # a killed write's leftover
    messages: list[str] = []
    with one_thread():
        train_incremental(tiny_config(data, out, *FAST), resume=True, log=messages.append)
    assert any(f"set aside the unreadable checkpoint {stray.name}" in message for message in messages)
    assert messages[-1].endswith(f"final checkpoint {newest}")
    assert list_checkpoints(checkpoints)[-1] == newest and load_checkpoint(newest)["progress"]["evaluated"]
    assert (checkpoints / f"{stray.name}.rejected").is_file() and not list(checkpoints.glob(".*.tmp-*"))
