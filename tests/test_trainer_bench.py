"""``bench/bench_step.py`` end to end at a toy size: both backends timed, results files written."""

import json

from cign_fast.bench import bench_step

from helpers import one_thread


def test_step_benchmark_writes_both_backends(tmp_path, capsys):
    argv = [
        "--batch",
        "4",
        "--classes",
        "6",
        "--old-classes",
        "4",
        "--visual-tokens",
        "3",
        "--audio-tokens",
        "5",
        "--feature-dim",
        "8",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    ]
    with one_thread():  # restores the thread count that --threads changes
        assert bench_step.main(argv) == 0
    report = json.loads((tmp_path / "cpu-step.json").read_text())
    assert [row["backend"] for row in report["rows"]] == ["reference", "auto"]
    assert report["size"]["classes"] == 6 and report["rows"][0]["speedup_vs_reference"] == 1.0
    assert all(row["ms_per_step"] > 0 and row["samples_per_s"] > 0 for row in report["rows"])
    assert set(report["rows"][0]["ops_run_on"].values()) == {"reference"}
    assert "| auto |" in (tmp_path / "cpu-step.md").read_text()


def test_bad_size_is_refused(tmp_path, capsys):
    assert bench_step.main(["--classes", "5", "--old-classes", "5", "--out", str(tmp_path)]) == 2
    assert "--old-classes" in capsys.readouterr().err
