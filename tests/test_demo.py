"""A short ``cign-fast demo`` run: real files, raw mode, two tasks; schema and task-0 accuracy."""

import json

from cign_fast.cli import main

from helpers import one_thread

TINY_DEMO = [
    "--tasks",
    "2",
    "--classes",
    "4",
    "--train-per-class",
    "8",
    "--test-per-class",
    "5",
    "--epochs",
    "6",
    "--batch-size",
    "8",
    "--dim",
    "32",
    "--image-size",
    "32",
    "--sample-rate",
    "4000",
    "--device",
    "cpu",
    "--no-progress",
    "--seed",
    "0",
]


def test_short_demo_writes_the_schema_and_learns_task_0(tmp_path, capsys):
    with one_thread():
        assert main(["demo", "--out", str(tmp_path / "demo"), *TINY_DEMO]) == 0
    printed = capsys.readouterr().out
    assert "audio_visual accuracy" in printed and "forgetting" in printed

    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for modality in ("audio", "visual", "audio_visual"):
        block = metrics[modality]
        assert set(block) >= {"matrix", "avg_incremental_accuracy", "last_accuracy", "forgetting", "bwt"}
        assert len(block["matrix"]) == 2 and block["matrix"][0][1] is None
        assert all(0.0 <= value <= 1.0 for row in block["matrix"] for value in row if value is not None)
        assert block["last_accuracy"] == block["accuracy_after_step"][-1]
    # task 0 = classes 0 and 1, which share their image: sound tells them apart (chance is 0.5)
    assert metrics["audio_visual"]["matrix"][0][0] >= 0.9
    assert metrics["audio"]["matrix"][0][0] >= 0.9
    assert (tmp_path / "demo" / "accuracy_matrices.png").stat().st_size > 0
    assert (tmp_path / "demo" / "data" / "labels.csv").is_file()
