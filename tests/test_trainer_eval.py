"""``cign-fast eval`` and ``cign-fast embed`` on a checkpoint of a tiny features-mode run."""

import json

import pytest

from cign_fast.cli import main
from cign_fast.train.checkpoint import list_checkpoints
from cign_fast.train.loop import train_incremental

from helpers import one_thread, tiny_config, write_feature_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = write_feature_dataset(root / "data")
    with one_thread():
        results = train_incremental(tiny_config(data, root / "run"), log=lambda message: None)
    return data, list_checkpoints(root / "run" / "checkpoints")[-1], results


def test_eval_reproduces_the_last_row_of_the_matrix(trained, tmp_path, capsys):
    data, checkpoint, results = trained
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
    assert "audio_visual" in capsys.readouterr().out
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["tasks_seen"] == 3
    for modality in ("audio", "visual", "audio_visual"):
        assert evaluation[modality]["per_task"] == pytest.approx(results.summary[modality]["matrix"][-1])
        assert evaluation[modality]["overall"] == pytest.approx(results.summary[modality]["last_accuracy"])


def test_embed_writes_a_tsne_png(trained, tmp_path):
    data, checkpoint, _ = trained
    out = tmp_path / "tsne.png"
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
                    str(out),
                    "--device",
                    "cpu",
                    "--perplexity",
                    "5",
                ]
            )
            == 0
        )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path)]) == 2
    assert "nope.pt" in capsys.readouterr().err
