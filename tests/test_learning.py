"""Learning regression: seeded features-mode runs must learn every task, token replay and distillation must keep
old tasks.

Three tasks of two classes; every class has its own audio and visual mean (both modalities informative), the
demo's small training recipe. Measured when these thresholds were set (audio-visual, fractions):

| run | a[t][t] | average incremental | forgetting |
|---|---|---|---|
| default (cross-entropy, Bernoulli KD, token replay, encoders frozen after task 0) | 0.92 / 1.0 / 0.58 | 0.77 | 0.21 |
| default without KD | 0.92 / 1.0 / 0.42 | 0.78 | 0.17 |
| no token replay, encoders trained (the default before) | 0.92 / 1.0 / 0.92 | 0.70 | 0.96 |
| the same without KD | 0.92 / 1.0 / 1.0 | 0.58 | 0.96 |
| the authors' per-class BCE + Bernoulli KD, no replay | 1.0 / 0.92 / 0.67 | 0.80 | 0.46 |
| the same without KD | | 0.61 | 1.0 |

With token replay the KD does not lower forgetting on this data (0.21 against 0.17; on the demo over three
seeds it does, 0.71x, see bench/results/learning.md), so the KD is held to its effect without replay here.
The thresholds sit well inside these and far above what the routing collapse and the shift-blind
distillation gave (every task after the first at chance, forgetting unchanged by distillation).
"""

from __future__ import annotations

import pytest

from cign_fast.train.loop import train_incremental

from helpers import one_thread, tiny_config, write_feature_dataset

NO_REPLAY = ("--set", "distill.token_replay=0", "--set", "distill.freeze_encoders=false")
BCE = ("--set", "distill.classification=bce", *NO_REPLAY)
RUNS = {
    "distill": (),
    "no_distill": ("--no-distill",),
    "no_replay": NO_REPLAY,
    "no_replay_no_distill": (*NO_REPLAY, "--no-distill"),
    "bce": BCE,
    "bce_no_distill": (*BCE, "--no-distill"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("learning")
    data = write_feature_dataset(root / "data", train_per_class=48, seed=0, shared_visual=False, noise=1.5)
    summaries = {}
    for name, extra in RUNS.items():
        with one_thread():
            results = train_incremental(
                tiny_config(data, root / name, "--epochs", "4", *extra), log=lambda message: None
            )
        summaries[name] = results.summary["audio_visual"]
    return summaries


def within_task(run: dict) -> list[float]:
    matrix = run["matrix"]
    return [matrix[t][t] for t in range(len(matrix))]


@pytest.mark.parametrize("name", ["no_replay", "bce"])
def test_every_task_is_learned(runs: dict[str, dict], name: str) -> None:
    assert min(within_task(runs[name])) >= 0.6, within_task(runs[name])  # two classes per task: chance is 0.5


def test_the_default_learns_every_task(runs: dict[str, dict]) -> None:
    accuracies = within_task(runs["distill"])
    assert min(accuracies) >= 0.55 and sum(accuracies) / len(accuracies) >= 0.75, accuracies


def test_token_replay_keeps_old_tasks(runs: dict[str, dict]) -> None:
    with_replay, without = runs["distill"], runs["no_replay"]
    assert with_replay["forgetting"] <= 0.5 * without["forgetting"], (with_replay["forgetting"], without["forgetting"])
    assert with_replay["avg_incremental_accuracy"] >= without["avg_incremental_accuracy"] + 0.05


def test_distillation_raises_average_incremental_accuracy_without_replay(runs: dict[str, dict]) -> None:
    with_kd = runs["no_replay"]["avg_incremental_accuracy"]
    without = runs["no_replay_no_distill"]["avg_incremental_accuracy"]
    assert with_kd >= without + 0.05, (with_kd, without)


def test_distillation_lowers_forgetting_with_the_authors_bce(runs: dict[str, dict]) -> None:
    with_kd, without = runs["bce"]["forgetting"], runs["bce_no_distill"]["forgetting"]
    assert with_kd <= 0.75 * without, (with_kd, without)
    assert runs["bce"]["avg_incremental_accuracy"] >= runs["bce_no_distill"]["avg_incremental_accuracy"] + 0.05
