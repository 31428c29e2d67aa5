"""``cign-fast compare``: every method end to end through the CLI, the table is the runs' metrics, ``eval``
reproduces each method's last row from its checkpoint, and a killed comparison resumes where it stopped."""

import csv
import json
from pathlib import Path

import pytest

from cign_fast.cli import main
from cign_fast.methods import METHODS
from cign_fast.metrics import MODALITIES
from cign_fast.train.checkpoint import list_checkpoints
from cign_fast.train.compare import METRICS, memory_of, plan_runs
from test_trainer_helpers import one_thread, tiny_train_args, write_feature_dataset

REQUIRED_MEMORY = 3
NEED_MEMORY = [name for name, cls in METHODS.items() if cls.memory_use == "required"]


def compare_args(data, out, *extra):
    return ["compare", *tiny_train_args(data, out, "--tasks", "2", "--epochs", "1",
                                        "--required-memory-per-class", str(REQUIRED_MEMORY), *extra)]


def run_dir(out: Path, name: str) -> Path:
    return Path(json.loads((out / "compare.json").read_text())["runs"][name][0])


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = write_feature_dataset(root / "data", num_classes=4, train_per_class=8, test_per_class=4)
    args = compare_args(data, root / "out", "--methods", ",".join(METHODS), "--seeds", "0")
    with one_thread():
        assert main(args) == 0
    return data, root / "out", args


def test_every_method_trains_and_the_table_holds_their_metrics(comparison, capsys):
    data, out, _ = comparison
    report = json.loads((out / "compare.json").read_text())
    assert report["methods"] == list(METHODS) and report["seeds"] == [0]
    assert report["memory_per_class"] == {name: REQUIRED_MEMORY if name in NEED_MEMORY else 0 for name in METHODS}
    table = (out / "compare.md").read_text()
    assert f"except for {', '.join(NEED_MEMORY)}" in table
    for name in METHODS:
        assert run_dir(out, name) == out / (f"{name}-memory{REQUIRED_MEMORY}" if name in NEED_MEMORY else name) \
            / "seed0"
        metrics = json.loads((run_dir(out, name) / "metrics.json").read_text())
        assert len(metrics["audio_visual"]["matrix"]) == 2
        assert not (run_dir(out, name) / "accuracy_matrices.png").exists()   # run.plots=false
        for modality in MODALITIES:
            for metric in METRICS:
                entry = report["results"][name][modality][metric]
                assert entry["values"] == [metrics[modality][metric]] and entry["std"] == 0.0
            assert report["results"][name][modality]["accuracy_after_step"]["mean"] == \
                metrics[modality]["accuracy_after_step"]
        cells = [f"{100 * report['results'][name][m]['last_accuracy']['mean']:.1f} ± 0.0" for m in MODALITIES]
        assert f"| {name} | {REQUIRED_MEMORY if name in NEED_MEMORY else '-'} | {' | '.join(cells)} |" in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the joint upper bound learns the 2 x 2 classes of this data far above chance (25%)
    assert report["results"]["joint"]["audio"]["last_accuracy"]["mean"] > 0.5


@pytest.mark.parametrize("name", list(METHODS))
def test_eval_reproduces_each_methods_last_row(comparison, tmp_path, name):
    data, out, _ = comparison
    checkpoint = list_checkpoints(run_dir(out, name) / "checkpoints")[-1]
    with one_thread():
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu",
                     "--json", str(tmp_path / "eval.json")]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    metrics = json.loads((run_dir(out, name) / "metrics.json").read_text())
    assert evaluation["method"] == name
    for modality in MODALITIES:
        assert evaluation[modality]["per_task"] == pytest.approx(metrics[modality]["matrix"][-1])


def test_embed_uses_the_methods_embedding(comparison, tmp_path):
    data, out, _ = comparison
    checkpoint = list_checkpoints(run_dir(out, "icarl") / "checkpoints")[-1]
    with one_thread():
        assert main(["embed", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "t.png"),
                     "--device", "cpu", "--perplexity", "3"]) == 0
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_killed_comparison_resumes_where_it_stopped(comparison, capsys):
    _, out, args = comparison
    before = json.loads((out / "compare.json").read_text())
    ewc, lwf = run_dir(out, "ewc"), run_dir(out, "lwf")
    untouched = (lwf / "metrics.json").stat().st_mtime_ns
    # as if killed while finishing EWC's last task: its "done" checkpoint and final metrics never written
    list_checkpoints(ewc / "checkpoints")[-1].unlink()
    (ewc / "metrics.json").unlink()
    (out / "compare.json").unlink()
    capsys.readouterr()
    with one_thread():
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"ewc seed 0: resuming in {ewc}" in printed
    assert printed.count("finished earlier") == len(METHODS) - 1
    assert "epoch 1/1: loss" not in printed                    # nothing is trained again
    assert (lwf / "metrics.json").stat().st_mtime_ns == untouched
    assert json.loads((out / "compare.json").read_text())["results"] == before["results"]


def test_train_method_flag_logs_the_methods_loss_terms(comparison, tmp_path):
    data, _, _ = comparison
    with one_thread():
        assert main(["train", *tiny_train_args(data, tmp_path / "lwf", "--method", "lwf", "--tasks", "2",
                                               "--epochs", "1")]) == 0
    with (tmp_path / "lwf" / "epochs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["task", "epoch", "loss", "ce_audio", "ce_visual", "kd"]
    assert float(rows[0]["kd"]) == 0.0 and float(rows[1]["kd"]) >= 0.0   # no old model at the first task
    for row in rows:
        assert float(row["loss"]) == pytest.approx(float(row["ce_audio"]) + float(row["ce_visual"]) + float(row["kd"]))
    assert "method: lwf" in (tmp_path / "lwf" / "config.yaml").read_text()


def test_a_comparison_sharing_the_runs_folder_reuses_the_runs_in_common(comparison, tmp_path, capsys):
    data, out, _ = comparison
    capsys.readouterr()
    args = compare_args(data, tmp_path / "with-memory", "--methods", "joint,icarl", "--seeds", "0",
                        "--memory-per-class", str(REQUIRED_MEMORY), "--runs", str(out))
    with one_thread():
        assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2   # joint keeps no memory; icarl had 3 per class
    report = json.loads((tmp_path / "with-memory" / "compare.json").read_text())
    assert report["runs"]["icarl"] == [str(run_dir(out, "icarl"))]


def test_changed_settings_are_refused_for_finished_runs(comparison, capsys):
    _, out, args = comparison
    assert main([*args, "--lr", "1e-2"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_memory_rules_and_bad_plans():
    assert memory_of("icarl", 0, 20) == 20 and memory_of("finetune", 0, 20) == 0
    assert memory_of("finetune", 5, 20) == 5 and memory_of("joint", 5, 20) == 0
    with pytest.raises(ValueError, match=r"--methods: each method once, got ewc"):
        plan_runs(["ewc", "ewc"], [0], Path("unused"), 0, 20)
    with pytest.raises(ValueError, match=r"method: expected one of .*got 'ewcc'"):
        plan_runs(["ewcc"], [0], Path("unused"), 0, 20)
    with pytest.raises(ValueError, match=r"--seeds: expected distinct seeds"):
        plan_runs(["ewc"], [1, 1], Path("unused"), 0, 20)
