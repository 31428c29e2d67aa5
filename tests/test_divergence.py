"""Divergence stops the run with a message naming where and why; the run stays resumable."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import torch

from cign_fast.cli import main
from cign_fast.train.config import build_config
from cign_fast.train.distributed import DistContext
from cign_fast.train.divergence import DivergenceMonitor, TrainingDiverged
from cign_fast.train.loop import train_incremental

from helpers import one_thread, tiny_config, tiny_train_args, write_feature_dataset

LOSS_KEYS = ("total", "cls_audio", "cls_visual", "token_ce", "kd")  # CIGN's terms, total first

FAST = ("--tasks", "2", "--epochs", "2")  # 3 steps per epoch
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def step_losses(total: float) -> dict[str, torch.Tensor]:
    return {key: torch.tensor(total if key == "total" else total / 4) for key in LOSS_KEYS}


def monitor(factor: float = 100.0) -> DivergenceMonitor:
    return DivergenceMonitor(LOSS_KEYS, factor, CPU, num_tasks=3, epochs=2, last_checkpoint=lambda: None)


def test_observing_a_step_never_reads_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    watcher = monitor()
    steps = [step_losses(value) for value in (3.0, 2.5, float("nan"), 2.0)]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, lambda *args, **kwargs: pytest.fail("host sync in observe()"))
    for step, losses in enumerate(steps):
        watcher.observe(task=1, epoch=0, step=step, lr=0.5 * (step + 1), losses=losses)
    monkeypatch.undo()
    with pytest.raises(
        TrainingDiverged,
        match=r"task 2/3, epoch 1/2, step 2 \(lr 1.5\): loss nan \(cls_audio nan, "
        r"cls_visual nan, token_ce nan, kd nan\)",
    ):
        watcher.check(task=1, epoch=0)


def test_finite_explosion_is_measured_against_the_tasks_first_loss() -> None:
    watcher = monitor(factor=10.0)
    for step, total in enumerate((2.0, 19.0, 1.0)):
        watcher.observe(task=0, epoch=0, step=step, lr=1e-3, losses=step_losses(total))
    watcher.check(task=0, epoch=0)  # 19 < 10 * 2: fine
    watcher.observe(task=0, epoch=0, step=3, lr=1e-3, losses=step_losses(21.0))
    with pytest.raises(
        TrainingDiverged,
        match=r"step 3 \(lr 0.001\): loss 21 .*run.divergence_factor = 10 times the "
        r"task's first loss 2",
    ):
        watcher.check(task=0, epoch=0)
    watcher.reset_interval()
    watcher.observe(task=1, epoch=0, step=0, lr=1e-3, losses=step_losses(30.0))  # a new task: a new first loss
    watcher.check(task=1, epoch=0)
    only_nan = monitor(factor=0.0)
    only_nan.observe(task=0, epoch=0, step=0, lr=1e-3, losses=step_losses(1.0))
    only_nan.observe(task=0, epoch=0, step=1, lr=1e-3, losses=step_losses(1e12))
    only_nan.check(task=0, epoch=0)


@pytest.mark.parametrize(
    "lr, why",
    [
        ("10", r"step \d+ \(lr 10\): loss .* more than run.divergence_factor = 100 times"),  # finite, in the thousands
        # the ops' NaN checks are off by default (CIGN_FAST_CHECKS), so the NaN reaches the loss and the monitor
        ("1e6", r"step \d+ \(lr 1e\+06\): loss nan"),
    ],
)
def test_exploding_loss_stops_the_run_naming_task_epoch_step_lr_and_terms(tmp_path: Path, lr: str, why: str) -> None:
    data = write_feature_dataset(tmp_path / "data")
    with one_thread(), pytest.raises(TrainingDiverged) as caught:
        train_incremental(tiny_config(data, tmp_path / "run", "--lr", lr), log=lambda message: None)
    message = str(caught.value)
    assert message.startswith("training diverged in task 1/3, epoch 1/3, ") and re.search(why, message), message
    assert all(key in message for key in ("cls_audio", "cls_visual", "token_ce", "kd"))
    assert "no checkpoint was written" in message


def test_nan_weights_stop_the_run_and_it_resumes_from_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_feature_dataset(tmp_path / "data")
    out = tmp_path / "run"
    real_step, calls = torch.optim.Adam.step, []

    def step_then_blow_up(optimizer, *args, **kwargs):  # the last update of task 2's first epoch poisons the weights
        result = real_step(optimizer, *args, **kwargs)
        calls.append(1)
        if len(calls) == 9:
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for parameter in group["params"]:
                        parameter.fill_(math.nan)
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_blow_up)
    with (
        one_thread(),
        pytest.raises(
            TrainingDiverged,
            match=r"task 2/2, epoch 1/2, the weights turned NaN or inf in "
            r"the update of epoch 1 step 2 \(lr 0.003\).*last good "
            r"checkpoint .*checkpoint-000003-task0-done\.pt",
        ),
    ):
        train_incremental(tiny_config(data, out, *FAST), log=lambda message: None)
    with (out / "epochs.csv").open() as handle:
        assert [row["task"] for row in csv.DictReader(handle)] == ["0", "0"]  # no diverged epoch recorded
    monkeypatch.undo()
    messages: list[str] = []
    with one_thread():
        results = train_incremental(tiny_config(data, out, *FAST), resume=True, log=messages.append)
    assert "resumed from checkpoint-000003-task0-done.pt" in "\n".join(messages)
    assert len(results.summary["audio_visual"]["matrix"]) == 2


@pytest.mark.parametrize("flag", ["inf", "-inf", "nan"])
def test_non_finite_learning_rate_is_refused(flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="optim.lr: expected a finite number"):
        build_config(overrides=[f"optim.lr={flag}"])
    assert main(["train", *tiny_train_args(tmp_path, tmp_path / "run", f"--lr={flag}")]) == 2
    assert "optim.lr: expected a finite number" in capsys.readouterr().err
