"""Checkpoints: a run killed mid-task resumes to the metrics of an uninterrupted run, for CIGN and for methods
with extra state (EWC's Fisher and anchor, iCaRL's old model, memory and class means); damaged files are skipped."""

import pytest
import torch

from cign_fast.cli import main
from cign_fast.train.checkpoint import (
    CorruptCheckpoint,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from cign_fast.train.loop import check_resume_compatible, train_incremental

from helpers import (
    COMPARE_RUNNER,
    KILLING_RUNNER,
    one_thread,
    read_run_results,
    run_runner,
    tiny_config,
    tiny_train_args,
    write_feature_dataset,
)

# 3 tasks of 2 classes, 32 clips each plus 12 exemplars from task 1 on, batch 16: task 0 takes steps 1-6,
# task 1's epochs steps 7-9, 10-12 and 13-15
KILL_POINTS = [
    ("cign", "train_step", 11),  # inside task 1's second epoch
    ("ewc", "evaluate", 2),  # after task 1's memory update and Fisher, before its evaluation
    ("icarl", "train_step", 11),  # inside task 1's second epoch, with task 0's old model and class means
]
METHODS = ",".join(method for method, _, _ in KILL_POINTS)


def test_killed_runs_resume_to_the_uninterrupted_metrics(tmp_path):
    """``compare`` of CIGN, EWC and iCaRL, SIGKILLed inside each method's run in turn: every start resumes the
    run killed last (without retraining its first task) and the final runs equal uninterrupted ones."""
    data = write_feature_dataset(tmp_path / "data")
    extra = ("--methods", METHODS, "--memory-per-class", "6", "--set", "run.keep_checkpoints=2")
    with one_thread():  # the uninterrupted references, in this process: one thread computes as the runners do
        assert main(["compare", *tiny_train_args(data, tmp_path / "reference", *extra)]) == 0

    args = tiny_train_args(data, tmp_path / "killed", *extra)
    previous = None
    for number, (method, hook, call) in enumerate(KILL_POINTS, start=1):
        killed = run_runner(KILLING_RUNNER, [method, hook, str(call), "compare", *args], timeout=600)
        assert killed.returncode == -9, killed.stderr  # SIGKILL: nothing after the kill point ran
        assert f"[{number}/3] {method} seed 0: training" in killed.stdout
        assert "task 2/3 epoch 1/3" in killed.stdout.split(f"[{number}/3]")[1]
        assert "after task 2/3" not in killed.stdout.split(f"[{number}/3]")[1]
        if previous is not None:
            check_resumed(killed.stdout, number - 1, previous)
        previous = method
    resumed = run_runner(COMPARE_RUNNER, args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    check_resumed(resumed.stdout, len(KILL_POINTS), previous)
    assert resumed.stdout.count("finished earlier") == len(KILL_POINTS) - 1

    for method, _, _ in KILL_POINTS:
        expected_metrics, expected_losses = read_run_results(tmp_path / "reference" / f"{method}-memory6" / "seed0")
        metrics, losses = read_run_results(tmp_path / "killed" / f"{method}-memory6" / "seed0")
        for modality in ("audio", "visual", "audio_visual"):
            assert metrics[modality] == expected_metrics[modality], method
        assert losses == pytest.approx(expected_losses, rel=1e-6, abs=1e-9), method
        assert len(list_checkpoints(tmp_path / "killed" / f"{method}-memory6" / "seed0" / "checkpoints")) == 2


def check_resumed(stdout: str, number: int, method: str) -> None:
    """Run ``number`` of the comparison (``method``) resumed from a checkpoint, its first task not retrained."""
    assert f"[{number}/3] {method} seed 0: resuming" in stdout
    segment = stdout.split(f"[{number}/3]")[1].split(f"[{number + 1}/3]")[0]
    assert "resumed from checkpoint-" in segment
    assert "task 1/3 epoch" not in segment and "after task 3/3" in segment


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
    assert "lr: 0.003" in (out / "config.yaml").read_text()  # the run's own config is kept
    other = "finetune" if method != "finetune" else "cign"
    with pytest.raises(ValueError, match=rf"method: '{method}' there, '{other}' here"):
        train_incremental(
            tiny_config(data, out, "--method", other, "--memory-per-class", "3", "--epochs", "2"),
            resume=True,
            log=lambda message: None,
        )
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
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temporary file is left behind
