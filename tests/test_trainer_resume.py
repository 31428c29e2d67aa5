"""Checkpoints: a run killed mid-task resumes to the metrics of an uninterrupted run, for CIGN and for methods
with extra state (EWC's Fisher and anchor, iCaRL's old model, memory and class means); damaged files are skipped."""

import pytest
import torch

from cign_fast.train.checkpoint import (
    CorruptCheckpoint, checkpoint_name, list_checkpoints, load_checkpoint, load_latest_checkpoint, save_checkpoint,
)
from cign_fast.train.loop import check_resume_compatible, train_incremental
from test_trainer_helpers import (
    KILLING_RUNNER, one_thread, read_run_results, run_runner, run_train, tiny_config, tiny_train_args,
    write_feature_dataset,
)

# 3 tasks of 2 classes, 32 clips each plus 12 exemplars from task 1 on, batch 16: task 0 takes steps 1-6,
# task 1's epochs steps 7-9, 10-12 and 13-15
KILL_POINTS = [
    ("cign", "train_step", 11),   # inside task 1's second epoch
    ("ewc", "evaluate", 2),       # after task 1's memory update and Fisher, before its evaluation
    ("icarl", "train_step", 11),  # inside task 1's second epoch, with task 0's old model and class means
]


@pytest.mark.parametrize("method, hook, call", KILL_POINTS, ids=[point[0] for point in KILL_POINTS])
def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path, method, hook, call):
    data = write_feature_dataset(tmp_path / "data")
    extra = ("--method", method, "--memory-budget", "12", "--set", "run.keep_checkpoints=2")
    with one_thread():   # the uninterrupted reference, in this process: one thread computes as the runners do
        train_incremental(tiny_config(data, tmp_path / "reference", *extra), log=lambda message: None)

    args = tiny_train_args(data, tmp_path / "killed", *extra)
    killed = run_runner(KILLING_RUNNER, [hook, str(call), *args], timeout=600)
    assert killed.returncode == -9, killed.stderr    # SIGKILL: nothing after the kill point ran
    assert "task 2/3 epoch 1/3" in killed.stdout and "after task 2/3" not in killed.stdout

    resumed = run_train(args + ["--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from checkpoint-" in resumed.stdout
    assert "task 1/3 epoch" not in resumed.stdout   # the first task is not trained again
    expected_metrics, expected_losses = read_run_results(tmp_path / "reference")
    metrics, losses = read_run_results(tmp_path / "killed")
    for modality in ("audio", "visual", "audio_visual"):
        assert metrics[modality] == expected_metrics[modality]
    assert losses == pytest.approx(expected_losses, rel=1e-6, abs=1e-9)
    assert len(list_checkpoints(tmp_path / "killed" / "checkpoints")) == 2   # keep_checkpoints


@pytest.mark.parametrize("method", ["cign", "ewc", "icarl"])
def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, method):
    data = write_feature_dataset(tmp_path / "data")
    out = tmp_path / "run"
    config = tiny_config(data, out, "--method", method, "--memory-per-class", "3", "--epochs", "2")
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

    changed = tiny_config(data, out, "--method", method, "--memory-per-class", "3", "--epochs", "2", "--lr", "1e-2")
    with pytest.raises(ValueError, match=r"optim\.lr"):
        train_incremental(changed, resume=True, log=lambda message: None)
    assert "lr: 0.003" in (out / "config.yaml").read_text()   # the run's own config is kept
    other = "finetune" if method != "finetune" else "cign"
    with pytest.raises(ValueError, match=rf"method: '{method}' there, '{other}' here"):
        train_incremental(tiny_config(data, out, "--method", other, "--memory-per-class", "3", "--epochs", "2"),
                          resume=True, log=lambda message: None)
    old_format = {**load_checkpoint(previous), "format": 1}
    with pytest.raises(ValueError, match=r"has format 1, this version reads format 2"):
        check_resume_compatible(old_format, config, uninterrupted.class_tasks, previous)


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
