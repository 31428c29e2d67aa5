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
from cign_fast.train.compare import (
    METRICS,
    load_recipe,
    memory_of,
    paired_t_test,
    plan_runs,
    recipe_names,
    student_t_p_value,
)

from helpers import one_thread, tiny_train_args, write_feature_dataset

REQUIRED_MEMORY = 3
NEED_MEMORY = [name for name, cls in METHODS.items() if cls.memory_use == "required"]


def compare_args(data, out, *extra):
    return [
        "compare",
        *tiny_train_args(
            data,
            out,
            "--tasks",
            "2",
            "--epochs",
            "1",
            "--required-memory-per-class",
            str(REQUIRED_MEMORY),
            "--set",
            "avcil.frames=1",  # the test clips' visual tokens are one frame
            *extra,
        ),
    ]


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
        assert (
            run_dir(out, name) == out / (f"{name}-memory{REQUIRED_MEMORY}" if name in NEED_MEMORY else name) / "seed0"
        )
        metrics = json.loads((run_dir(out, name) / "metrics.json").read_text())
        assert len(metrics["audio_visual"]["matrix"]) == 2
        assert not (run_dir(out, name) / "accuracy_matrices.png").exists()  # run.plots=false
        for modality in MODALITIES:
            for metric in METRICS:
                entry = report["results"][name][modality][metric]
                assert entry["values"] == [metrics[modality][metric]] and entry["std"] == 0.0
            assert (
                report["results"][name][modality]["accuracy_after_step"]["mean"]
                == metrics[modality]["accuracy_after_step"]
            )
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
        assert (
            main(
                [
                    "eval",
                    "--checkpoint",
                    str(checkpoint),
                    "--data",
                    str(data),
                    "--device",
                    "cpu",
                    "--json",
                    str(tmp_path / "eval.json"),
                ]
            )
            == 0
        )
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    metrics = json.loads((run_dir(out, name) / "metrics.json").read_text())
    assert evaluation["method"] == name
    for modality in MODALITIES:
        assert evaluation[modality]["per_task"] == pytest.approx(metrics[modality]["matrix"][-1])


def test_embed_uses_the_methods_embedding(comparison, tmp_path):
    data, out, _ = comparison
    checkpoint = list_checkpoints(run_dir(out, "icarl") / "checkpoints")[-1]
    with one_thread():
        assert (
            main(
                [
                    "embed",
                    "--checkpoint",
                    str(checkpoint),
                    "--data",
                    str(data),
                    "--out",
                    str(tmp_path / "t.png"),
                    "--device",
                    "cpu",
                    "--perplexity",
                    "3",
                ]
            )
            == 0
        )
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
    assert "epoch 1/1: loss" not in printed  # nothing is trained again
    assert (lwf / "metrics.json").stat().st_mtime_ns == untouched
    assert json.loads((out / "compare.json").read_text())["results"] == before["results"]


def test_a_run_killed_before_its_first_checkpoint_starts_again(comparison, capsys):
    _, out, args = comparison
    before = json.loads((out / "compare.json").read_text())
    lwf = run_dir(out, "lwf")
    # as if killed during its first task: the run folder has its config and logs but no checkpoint
    for checkpoint in list_checkpoints(lwf / "checkpoints"):
        checkpoint.unlink()
    (lwf / "metrics.json").unlink()
    capsys.readouterr()
    with one_thread():
        assert main(args) == 0
    assert f"lwf seed 0: restarting in {lwf}" in capsys.readouterr().out
    assert json.loads((out / "compare.json").read_text())["results"] == before["results"]


def test_train_method_flag_logs_the_methods_loss_terms(comparison, tmp_path):
    data, _, _ = comparison
    with one_thread():
        assert (
            main(
                ["train", *tiny_train_args(data, tmp_path / "lwf", "--method", "lwf", "--tasks", "2", "--epochs", "1")]
            )
            == 0
        )
    with (tmp_path / "lwf" / "epochs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["task", "epoch", "loss", "ce_audio", "ce_visual", "kd"]
    assert float(rows[0]["kd"]) == 0.0  # no old model at the first task
    assert float(rows[1]["kd"]) >= -1e-6  # a KL, up to float32 rounding
    for row in rows:
        assert float(row["loss"]) == pytest.approx(float(row["ce_audio"]) + float(row["ce_visual"]) + float(row["kd"]))
    assert "method: lwf" in (tmp_path / "lwf" / "config.yaml").read_text()


def test_a_comparison_sharing_the_runs_folder_reuses_the_runs_in_common(comparison, tmp_path, capsys):
    data, out, _ = comparison
    capsys.readouterr()
    args = compare_args(
        data,
        tmp_path / "with-memory",
        "--methods",
        "joint,icarl",
        "--seeds",
        "0",
        "--memory-per-class",
        str(REQUIRED_MEMORY),
        "--runs",
        str(out),
    )
    with one_thread():
        assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2  # joint keeps no memory; icarl had 3 per class
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


# ----- significance and benchmark recipes --------------------------------------------------------------------


def test_student_t_p_values_match_scipy_and_the_paired_test_is_over_seeds():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 10):
        for t in (0.0, 0.4, 1.3, 2.9, 12.0):
            assert student_t_p_value(t, df) == pytest.approx(2 * stats.t.sf(t, df), abs=1e-12)
    method, reference = [0.52, 0.61, 0.70], [0.40, 0.47, 0.61]
    test = paired_t_test(method, reference)
    expected = stats.ttest_rel(method, reference)
    assert (
        test["n"] == 3
        and test["t"] == pytest.approx(expected.statistic)
        and test["p"] == pytest.approx(expected.pvalue)
    )
    assert paired_t_test([0.5, 0.6], [0.4, 0.5]) == {"mean_difference": pytest.approx(0.1), "t": None, "p": 0.0, "n": 2}
    assert paired_t_test([0.5], [0.4])["p"] is None


def test_every_recipe_builds_a_config_and_names_known_methods():
    from cign_fast.train.config import build_config

    names = recipe_names()
    assert len(names) == 7 and {
        "cign-vggsound-instruments-4x9",
        "cign-vggsound100-4x25",
        "cign-vggsound100-10x10",
        "cign-vgg-ss",
        "avcil-ave-4x7",
        "avcil-kinetics-sounds-5x6",
        "avcil-vggsound100-10x10",
    } == set(names)
    for name in names:
        settings, values, path = load_recipe(name)
        config = build_config(base=values, base_source=str(path))
        assert set(settings["methods"]) <= set(METHODS) and len(settings["seeds"]) == 3, name
        if name.startswith("avcil"):
            assert config.data.input_mode == "features" and settings["memory_budget"] > 0
            classes = Path(config.data.class_order).read_text().splitlines()[1:]
            assert (
                len(classes)
                == {"avcil-ave-4x7": 28, "avcil-kinetics-sounds-5x6": 30, "avcil-vggsound100-10x10": 100}[name]
            )
            assert len(classes) % config.data.tasks == 0
    with pytest.raises(ValueError, match=r"--benchmark: expected a data preset or one of the recipes"):
        load_recipe("nope")


def test_a_recipe_runs_its_table_with_seeds_aggregated_and_tested_against_cign(tmp_path, monkeypatch):
    from cign_fast.train import compare

    data = write_feature_dataset(tmp_path / "data", num_classes=4, train_per_class=8, test_per_class=4)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny.yaml").write_text(
        "compare:\n  methods: [cign, finetune, l2p]\n  seeds: [0, 1, 2]\n"
        "  memory_budget: 4\ndata:\n  tasks: 2\noptim:\n  epochs: 1\n"
    )
    monkeypatch.setattr(compare, "RECIPES_DIR", recipes)
    args = tiny_train_args(data, tmp_path / "out", "--benchmark", "tiny")
    args = [
        a for i, a in enumerate(args) if not (a in ("--tasks", "--epochs") or args[i - 1] in ("--tasks", "--epochs"))
    ]
    with one_thread():
        assert main(["compare", *args]) == 0
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert report["methods"] == ["cign", "finetune", "l2p"] and report["seeds"] == [0, 1, 2]
    assert report["memory_budget"] == {"cign": 4, "finetune": 4, "l2p": 4}
    assert run_dir(tmp_path / "out", "l2p") == tmp_path / "out" / "l2p-budget4" / "seed0"
    for method in ("finetune", "l2p"):
        for modality in MODALITIES:
            for metric in METRICS:
                test = report["significance"][method][modality][metric]
                values = report["results"][method][modality][metric]["values"]
                reference = report["results"]["cign"][modality][metric]["values"]
                assert test == paired_t_test(values, reference) and test["n"] == 3
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "## Significance against cign" in table and "n = 3 seeds (df = 2)" in table
    assert "3 seeds give a test little power" in table and "| 4 in total |" in table
    test = report["significance"]["l2p"]["audio_visual"]["last_accuracy"]
    p = "p n/a" if test["p"] is None else "p < 0.001" if test["p"] < 0.001 else f"p = {test['p']:.3f}"
    assert f"{100 * test['mean_difference']:+.1f} ({p})" in table
