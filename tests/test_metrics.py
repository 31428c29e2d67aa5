"""Metric definitions on hand-made accuracy matrices with answers worked out by hand."""

import json

import pytest

from cign_fast.metrics import (
    accuracy_after_step,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    format_matrix,
    mean_task_accuracy_after_step,
    metrics_summary,
    padded_matrix,
)

# a[t][i]; task 1 improves on task 0 after training task 1 (positive transfer), then both drop.
MATRIX = [[0.6], [0.8, 0.9], [0.5, 0.7, 0.95]]
SIZES = [10, 20, 10]


def test_clip_weighted_step_accuracy():
    # A_1 = (0.8*10 + 0.9*20) / 30; A_2 = (0.5*10 + 0.7*20 + 0.95*10) / 40
    assert accuracy_after_step(MATRIX, SIZES) == pytest.approx([0.6, 26 / 30, 28.5 / 40])


def test_task_mean_step_accuracy_differs_from_clip_weighted():
    assert mean_task_accuracy_after_step(MATRIX) == pytest.approx([0.6, 0.85, 2.15 / 3])


def test_average_incremental_and_last_accuracy():
    steps = accuracy_after_step(MATRIX, SIZES)
    assert average_incremental_accuracy(steps) == pytest.approx((0.6 + 26 / 30 + 28.5 / 40) / 3)
    assert steps[-1] == pytest.approx(0.7125)


def test_forgetting_uses_best_earlier_accuracy():
    # task 0: best of a[0][0]=0.6, a[1][0]=0.8 -> 0.8 - 0.5 = 0.3; task 1: 0.9 - 0.7 = 0.2
    assert forgetting(MATRIX) == pytest.approx(0.25)


def test_backward_transfer_uses_accuracy_right_after_learning():
    # (0.5 - 0.6 + 0.7 - 0.9) / 2
    assert backward_transfer(MATRIX) == pytest.approx(-0.15)


def test_single_task_has_no_forgetting():
    assert forgetting([[0.7]]) == 0.0
    assert backward_transfer([[0.7]]) == 0.0


def test_no_drop_means_zero_forgetting():
    assert forgetting([[0.5], [0.5, 0.9], [0.5, 0.9, 0.4]]) == pytest.approx(0.0)


def test_padded_matrix_and_summary_schema():
    assert padded_matrix(MATRIX) == [[0.6, None, None], [0.8, 0.9, None], [0.5, 0.7, 0.95]]
    summary = metrics_summary({"audio": MATRIX, "visual": MATRIX, "audio_visual": MATRIX}, SIZES)
    decoded = json.loads(json.dumps(summary))
    for name in ("audio", "visual", "audio_visual"):
        block = decoded[name]
        assert block["matrix"][0] == [0.6, None, None]
        assert block["last_accuracy"] == pytest.approx(0.7125)
        assert block["forgetting"] == pytest.approx(0.25)
        assert block["bwt"] == pytest.approx(-0.15)
    assert "accuracy_after_step" in decoded["definitions"]


def test_format_matrix_leaves_future_tasks_blank():
    text = format_matrix(MATRIX, "audio")
    first_row = text.splitlines()[2]
    assert "60.0" in first_row and first_row.rstrip().endswith("60.0")


@pytest.mark.parametrize("bad", [[], [[0.5], [0.4]], [[None]]])
def test_malformed_matrix_is_refused(bad):
    with pytest.raises(ValueError, match="matrix"):
        forgetting(bad)


def test_missing_test_size_is_refused():
    with pytest.raises(ValueError, match="task_test_sizes"):
        accuracy_after_step(MATRIX, [10, 20])
