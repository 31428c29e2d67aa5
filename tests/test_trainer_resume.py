"""Checkpoints: a run killed mid-task resumes to the metrics of an uninterrupted run; damaged files are skipped."""

import signal
import time

import pytest
import torch

from cign_fast.train.checkpoint import (
    CorruptCheckpoint, checkpoint_name, list_checkpoints, load_checkpoint, load_latest_checkpoint, save_checkpoint,
)
from cign_fast.train.loop import train_incremental
from test_trainer_helpers import one_thread, read_run_results, run_train, start_train, tiny_config, tiny_train_args, write_feature_dataset

KILL_AFTER_SEQUENCE = 5   # task 1's first epoch: 3 epoch checkpoints + 1 "done" for task 0, then this one


def newest_sequence(directory):
    paths = list_checkpoints(directory)
    return int(paths[-1].name.split("-")[1]) if paths else 0


def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    # enough clips that an epoch takes a while, so the kill lands inside a task
    data = write_feature_dataset(tmp_path / "data", train_per_class=150)
    extra = ("--memory-budget", "12", "--set", "run.keep_checkpoints=2")
    reference = run_train(tiny_train_args(data, tmp_path / "reference", *extra), timeout=600)
    assert reference.returncode == 0, reference.stderr

    args = tiny_train_args(data, tmp_path / "killed", *extra)
    process = start_train(args)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 600
    while newest_sequence(checkpoints) < KILL_AFTER_SEQUENCE and process.poll() is None:
        assert time.monotonic() < deadline, "the run never wrote its checkpoints"
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    resumed = run_train(args + ["--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint-" in resumed.stdout
    assert "task 1/3 epoch" not in resumed.stdout   # the first task is not trained again
    expected_metrics, expected_losses = read_run_results(tmp_path / "reference")
    metrics, losses = read_run_results(tmp_path / "killed")
    for modality in ("audio", "visual", "audio_visual"):
        assert metrics[modality] == expected_metrics[modality]
    assert losses == pytest.approx(expected_losses, rel=1e-6, abs=1e-9)
    assert len(list_checkpoints(checkpoints)) == 2   # keep_checkpoints


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    data = write_feature_dataset(tmp_path / "data")
    out = tmp_path / "run"
    config = tiny_config(data, out)
    with one_thread():
        uninterrupted = train_incremental(config, log=lambda message: None)
        previous, newest = list_checkpoints(out / "checkpoints")[-2:]
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        messages = []
        resumed = train_incremental(config, resume=True, log=messages.append)
    warning = next(m for m in messages if "warning" in m)
    assert newest.name in warning and "truncated" in warning
    assert any(f"resumed from {previous.name}" in m for m in messages)
    for modality in ("audio", "visual", "audio_visual"):
        assert resumed.summary[modality]["matrix"] == uninterrupted.summary[modality]["matrix"]

    changed = tiny_config(data, out, "--lr", "1e-2")
    with pytest.raises(ValueError, match=r"optim\.lr"):
        train_incremental(changed, resume=True, log=lambda message: None)
    assert "lr: 0.003" in (out / "config.yaml").read_text()   # the run's own config is kept


def test_checkpoint_digest_detects_damage(tmp_path):
    first, second = tmp_path / checkpoint_name(1, 0, 1), tmp_path / checkpoint_name(2, 0, 2)
    save_checkpoint(first, {"weights": torch.arange(4.0)})
    save_checkpoint(second, {"weights": torch.arange(5.0)})
    damaged = bytearray(second.read_bytes())
    damaged[40] ^= 0xFF
    second.write_bytes(bytes(damaged))
    with pytest.raises(CorruptCheckpoint, match=second.name):
        load_checkpoint(second)
    reports = []
    state, path = load_latest_checkpoint(tmp_path, report=reports.append)
    assert path == first and torch.equal(state["weights"], torch.arange(4.0))
    assert second.name in reports[0]
    assert not list(tmp_path.glob(".*.tmp-*"))   # no temporary file is left behind
