"""``make gpu-check`` (bench/gpu_check.py): the parts that do not need a GPU, run here."""

from __future__ import annotations

import json
import sys

from cign_fast.bench import gpu_check


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: None)
    assert gpu_check.main([]) == 0
    assert "no GPU here" in capsys.readouterr().out


def test_a_step_past_its_time_is_stopped_with_its_children():
    command = [
        sys.executable,
        "-c",
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)",
    ]
    status, seconds, _, _ = gpu_check.run_command(command, 1.0, {})
    assert status == "timed out after 1 s" and seconds < 30


def test_the_budget_keeps_time_for_the_steps_after():
    budget = gpu_check.Budget(100.0, steps=3)
    first = budget.grant(200.0)
    assert 100.0 - 2 * gpu_check.RESERVE_PER_STEP_S - 1 < first <= 100.0 - 2 * gpu_check.RESERVE_PER_STEP_S
    assert budget.grant(10.0) == 10.0


def test_pytest_counts_are_read_from_the_summary_line():
    output = "....F.s\n=== short test summary info ===\nFAILED x\n1 failed, 5 passed, 1 skipped in 2.31s\n"
    assert gpu_check.test_counts(output) == {"failed": 1, "passed": 5, "skipped": 1}


def test_summary_reads_the_benchmark_files(tmp_path):
    env = {
        "gpu": "NVIDIA H200",
        "capability": "9.0",
        "date_utc": "2026-01-01T00:00:00+00:00",
        "versions": {"torch": "2.11.0"},
    }
    (tmp_path / "nvidia-h200-ops.json").write_text(
        json.dumps(
            {
                "targets": [
                    {
                        "op": "assign_attention",
                        "provider": "triton",
                        "case": "cign-n36 soft fp32",
                        "metric": "speedup vs eager",
                        "target": 2.0,
                        "measured": 3.5,
                    }
                ]
            }
        )
    )
    (tmp_path / "nvidia-h200-step.json").write_text(
        json.dumps(
            {
                "rows": [
                    {"backend": "reference", "ms_per_step": 20.0, "speedup_vs_reference": 1.0},
                    {"backend": "auto", "ms_per_step": 10.0, "speedup_vs_reference": 2.0},
                ]
            }
        )
    )
    tests = gpu_check.StepResult("tests", "pytest", "ok", 12.0, details={"totals": {"passed": 7}})
    lines = gpu_check.summary_lines(env, [tests], tmp_path, "nvidia-h200")
    assert "tests: 7 passed" in lines
    assert any("triton cign-n36 soft fp32 speedup vs eager 3.50x (target 2.0x)" in line for line in lines)
    assert any("auto" in line and "10.0 ms/step, 2.00x reference" in line for line in lines)
    assert len(lines) < 25
