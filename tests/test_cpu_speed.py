"""The measured CPU dispatch (``cign_fast.ops.cpu_speed``) and the benchmarks' load marking."""

from __future__ import annotations

import json
import time

import pytest
import torch

from cign_fast.bench import common
from cign_fast.ops import backends, cpu_speed

from helpers import require_backend

OP = "assign_attention_forward"
CPU = torch.device("cpu")


def entry(mode: str, speedup: float, threads: int = 1, loaded: bool = False) -> dict:
    return {
        "op": "assign_attention",
        "mode": mode,
        "dtype": "fp32",
        "threads": threads,
        "speedup": speedup,
        "shapes": ["cign-n36"],
        "loaded": loaded,
        "source": "test",
    }


@pytest.fixture
def speed_table(tmp_path, monkeypatch):
    """Install a speed table made of the given entries (CIGN_FAST_CPU_SPEED)."""

    def install(*entries: dict) -> None:
        path = tmp_path / "speed.json"
        path.write_text(json.dumps({"entries": list(entries)}))
        monkeypatch.setenv(cpu_speed.SPEED_VARIABLE, str(path))
        cpu_speed.load_table.cache_clear()

    yield install
    cpu_speed.load_table.cache_clear()


def test_auto_gives_cpp_only_the_modes_it_was_not_measured_slower_in(speed_table):
    require_backend("cpp", OP)
    speed_table(entry("soft", 0.8), entry("hard", 1.3))
    assert backends.select_backend("auto", OP, CPU, torch.float32, "soft") == "reference"
    assert backends.select_backend("auto", OP, CPU, torch.float32, "hard") == "cpp"
    assert backends.select_backend("auto", OP, CPU, torch.float32, "gumbel") == "cpp"  # unmeasured: the order
    assert backends.select_backend("cpp", OP, CPU, torch.float32, "soft") == "cpp"  # by name: used as asked
    picks = {row["mode"]: row for row in backends.auto_report(threads=1) if row["dtype"] == "float32"}
    assert picks["soft"]["pick"] == "reference" and picks["soft"]["why"].startswith("slower than reference: 0.80x")
    assert picks["hard"]["pick"] == "cpp" and picks["hard"]["why"].startswith("faster than reference: 1.30x")
    assert picks["gumbel"]["pick"] == "cpp" and "not measured" in picks["gumbel"]["why"]


def test_unloaded_measurements_win_and_the_nearest_thread_count_decides(speed_table):
    speed_table(entry("soft", 2.0, loaded=True), entry("soft", 0.9), entry("hard", 0.9, 1), entry("hard", 1.2, 2))
    assert cpu_speed.cpp_verdict("assign_attention", "soft", torch.float32, 1)[0] is False
    assert cpu_speed.cpp_verdict("assign_attention", "hard", torch.float32, 1)[0] is False
    faster, why = cpu_speed.cpp_verdict("assign_attention", "hard", torch.float32, 4)
    assert faster and "at 2 thread(s)" in why
    speed_table(entry("soft", 1.4, loaded=True))
    faster, why = cpu_speed.cpp_verdict("assign_attention", "soft", torch.float32, 1)
    assert faster and "loaded machine" in why


def test_the_speed_table_of_a_report_is_the_smallest_ratio_over_shapes():
    def row(shape, provider, ms, loaded=None):
        return {
            "op": "assign_attention",
            "shape": shape,
            "mode": "soft",
            "dtype": "fp32",
            "threads": 1,
            "provider": provider,
            "forward_backward_ms": ms,
            "loaded": loaded,
        }

    report = {
        "environment": {"date_utc": "d", "device": "cpu"},
        "assign_attention": [
            row("a", "reference", 10.0),
            row("a", "cpp", 5.0),
            row("b", "reference", 10.0, "load 3 before"),
            row("b", "cpp", 8.0, "load 3 before"),
            row("b", "eager", 1.0),
        ],
    }
    (cell,) = cpu_speed.speed_table(report)
    assert cell["speedup"] == pytest.approx(1.25) and cell["shapes"] == ["a", "b"] and cell["loaded"]


def test_a_case_is_loaded_when_other_processes_use_the_cpus(monkeypatch):
    monkeypatch.setattr(common.os, "cpu_count", lambda: 4)
    assert common.load_verdict(0.3, threads=2) is None
    assert common.load_verdict(None, threads=4) is None  # no /proc/stat: nothing to judge by
    assert "half the logical CPUs" in common.load_verdict(2.5, threads=1)
    assert "left free by 4 threads" in common.load_verdict(0.5, threads=4)
    assert common.load_verdict(1.9, threads=2) is None  # 2 cores left free


def test_other_processes_cores_subtract_the_benchmarks_own_cpu_time():
    assert common.other_processes_cores(busy=6.0, own=2.0, wall=2.0) == pytest.approx(2.0)
    assert common.other_processes_cores(busy=1.0, own=1.2, wall=1.0) == 0.0  # clock granularity: never negative
    assert common.other_processes_cores(busy=None, own=1.0, wall=1.0) is None


def test_a_measured_case_records_its_load(monkeypatch):
    # the machine busy 3 CPU seconds during 1 s of the case, the benchmark itself using none of them
    clocks = iter([(100.0, 5.0, 0.0), (103.0, 5.0, 1.0)])
    monkeypatch.setattr(common, "cpu_clocks", lambda: next(clocks))
    monkeypatch.setattr(common.os, "cpu_count", lambda: 4)
    rows = common.measured_case(lambda: [{"threads": 1}])
    assert set(rows[0]) == {"threads", "load_average_before", "load_average_after", "other_processes_cores", "loaded"}
    assert rows[0]["other_processes_cores"] == pytest.approx(3.0) and "half the logical CPUs" in rows[0]["loaded"]


def test_the_machine_busy_reading_counts_work_done():
    start = common.machine_busy_seconds()
    if start is None:
        pytest.skip("no /proc/stat on this OS")
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert common.machine_busy_seconds() - start >= 0.2  # this process alone was busy 0.3 s


def test_a_loaded_check_is_not_counted():
    check = common.target_check(
        "op", {"provider": "cpp", "loaded": "x", "forward_backward_vs_eager": 2.0}, "c", "vs_eager", 1.5
    )
    assert check["met"] and not check["counted"]
    assert "not counted (loaded)" in common.targets_markdown([check])[-1]
