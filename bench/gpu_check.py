"""``make gpu-check``: the first hour on a GPU, prepared. Builds the extensions (CUDA included), holds every
backend against the reference (``cign-fast info --check``), runs the GPU part of the test suite and the
quick benchmarks, writes ``<out>/<gpu>-gpu-check.json`` and ``.md`` (the benchmarks write their own
``<gpu>-ops`` and ``<gpu>-step`` files beside them) and prints a one-screen summary.

Every step has its own time limit and the whole run a budget (default 8 minutes); a step that runs out
of time is stopped and reported, and the next one still runs. On a machine where torch sees no CUDA
device it says so and exits 0 without running anything.

    python bench/gpu_check.py [--out bench-results] [--budget 480] [--skip-build]

``--out`` defaults to ``./bench-results`` in the working directory; ``make gpu-check`` passes the
repository's ``bench/results``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# cign_fast.bench.options.RESULTS; not imported: this script runs before cign_fast is built
RESULTS = Path("bench-results")
# The test files whose backends run on the GPU when torch sees one (the rest of the suite is CPU-only).
GPU_TESTS = (
    "tests/test_assign_attention.py",
    "tests/test_assign_attention_triton.py",
    "tests/test_token_distill_kl.py",
    "tests/test_token_distill_kl_triton.py",
    "tests/test_gumbel_noise.py",
    "tests/test_native_build.py",
    "tests/test_host_syncs.py",
    "tests/test_backend_self_check.py",
    "tests/test_contract.py",
)
PARALLEL_TEST_FILES = 4  # pytest processes at a time (Triton compiles its kernels on the CPU)
RESERVE_PER_STEP_S = 15  # kept back for each step still to come
TAIL_LINES = 30  # of each step's output, in the results files


@dataclass
class StepResult:
    name: str
    command: str
    status: str = "not run"  # ok, failed (exit code), timed out, skipped
    seconds: float = 0.0
    tail: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


def run_command(command: list[str], timeout: float, env: dict[str, str]) -> tuple[str, float, str, str]:
    """``(status, seconds, stdout, stderr)`` of ``command`` in the repository, killed with its children after
    ``timeout`` seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=max(timeout, 1.0))
        status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        status = f"timed out after {timeout:.0f} s"
    return status, time.perf_counter() - start, stdout or "", stderr or ""


class Budget:
    """Time left of the whole run; each step gets its own cap, less what the steps after it need."""

    def __init__(self, seconds: float, steps: int) -> None:
        self.deadline = time.perf_counter() + seconds
        self.steps_left = steps

    def grant(self, cap: float) -> float:
        self.steps_left -= 1
        return min(cap, self.deadline - time.perf_counter() - RESERVE_PER_STEP_S * self.steps_left)


def step(name: str, command: list[str], cap: float, budget: Budget, env: dict[str, str]) -> tuple[StepResult, str]:
    """Run one step within its share of the budget: its result and its standard output."""
    result = StepResult(name, " ".join(command))
    allowed = budget.grant(cap)
    if allowed < RESERVE_PER_STEP_S:
        result.status = "skipped: the run's time budget is spent"
        return result, ""
    print(f"[gpu-check] {name} (at most {allowed:.0f} s): {result.command}", flush=True)
    result.status, result.seconds, stdout, stderr = run_command(command, allowed, env)
    result.tail = (stdout + stderr).splitlines()[-TAIL_LINES:]
    return result, stdout


def test_counts(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line (``3 passed, 1 skipped in 2.1s``)."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", line)]
    return {
        kind: int(count)
        for count, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", lines[-1] if lines else "")
    }


def run_tests(cap: float, budget: Budget, env: dict[str, str]) -> StepResult:
    """The GPU test files, ``PARALLEL_TEST_FILES`` pytest processes at a time, each within the step's time."""
    result = StepResult("tests", f"pytest -q {' '.join(GPU_TESTS)}")
    allowed = budget.grant(cap)
    if allowed < RESERVE_PER_STEP_S:
        result.status = "skipped: the run's time budget is spent"
        return result
    print(f"[gpu-check] tests (at most {allowed:.0f} s): {len(GPU_TESTS)} files", flush=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]

    def one(path: str) -> tuple[str, str, str]:
        status, _, stdout, stderr = run_command([*command, path], allowed - (time.perf_counter() - start), env)
        return path, status, stdout + stderr

    with ThreadPoolExecutor(PARALLEL_TEST_FILES) as pool:
        outcomes = list(pool.map(one, GPU_TESTS))
    result.seconds = time.perf_counter() - start
    totals: dict[str, int] = {}
    for path, status, output in outcomes:
        counts = test_counts(output)
        result.details[path] = {"status": status, **counts}
        for kind, count in counts.items():
            totals[kind] = totals.get(kind, 0) + count
        if status != "ok":
            result.tail += [f"--- {path}: {status}"] + output.splitlines()[-TAIL_LINES:]
    result.details["totals"] = totals
    failed = [path for path, status, _ in outcomes if status != "ok"]
    result.status = "ok" if not failed else f"failed in {len(failed)} file(s)"
    return result


def gpu_name() -> str | None:
    """The first CUDA device's name as torch sees it, or None without one (or without torch)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def environment() -> dict[str, object]:
    import datetime
    import platform

    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton_version,
        },
        "cpus": os.cpu_count(),
    }


def slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200`` (as the benchmarks name their files)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def summarize_checks(result: StepResult, stdout: str) -> None:
    """Keep the counts and failed rows of ``info --check --json`` (its standard output) in ``result.details``."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return
    rows = report.get("checks", [])
    result.details = {
        "rows": len(rows),
        "ok": sum(row["result"] == "ok" for row in rows),
        "failed": [row for row in rows if row["result"].startswith("FAILED")],
        "unavailable": sorted(
            {f"{row['backend']}: {row['result']}" for row in rows if row["result"].startswith("unavailable")}
        ),
    }
    result.tail = []


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def summary_lines(env: dict, results: list[StepResult], out: Path, label: str) -> list[str]:
    """The one-screen summary (also the head of the markdown file)."""
    lines = [
        f"gpu-check on {env['gpu']} (sm_{env['capability'].replace('.', '')}), {env['date_utc']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        "",
    ]
    lines += [f"  {r.name:<11} {r.status:<34} {r.seconds:6.1f} s" for r in results]
    by_name = {r.name: r for r in results}
    checks = by_name.get("self-check")
    if checks and "rows" in checks.details:
        lines.append(
            f"self-check: {checks.details['ok']}/{checks.details['rows']} ok, {len(checks.details['failed'])} failed"
        )
        lines += [
            f"  FAILED {row['backend']} {row['op']} {row['dtype']}: {row['result']}"
            for row in checks.details["failed"][:5]
        ]
    tests = by_name.get("tests")
    if tests and "totals" in tests.details:
        lines.append("tests: " + ", ".join(f"{count} {kind}" for kind, count in tests.details["totals"].items()))
    ops = read_json(out / f"{label}-ops.json")
    for target in ops.get("targets", []):
        measured = "-" if target["measured"] is None else f"{target['measured']:.2f}x"
        lines.append(
            f"ops target: {target['op']} {target['provider']} {target['case']} {target['metric']} "
            f"{measured} (target {target['target']:.1f}x)"
        )
    for row in read_json(out / f"{label}-step.json").get("rows", []):
        speedup = row["speedup_vs_reference"]
        lines.append(
            f"step: backend {row['backend']:<9} {row['ms_per_step']:8.1f} ms/step"
            + (f", {speedup:.2f}x reference" if speedup else "")
        )
    return lines


def markdown(env: dict, results: list[StepResult], summary: list[str]) -> str:
    lines = [f"# GPU check: {env['gpu']}", "", "```", *summary, "```", ""]
    for result in results:
        lines += [f"## {result.name}: {result.status}", "", f"`{result.command}` ({result.seconds:.1f} s)", ""]
        if result.tail:
            lines += ["```", *result.tail, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: ./{RESULTS})")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    parser.add_argument("--skip-build", action="store_true", help="use the extensions as they are built")
    args = parser.parse_args(argv)
    name = gpu_name()
    if name is None:
        print("gpu-check: no GPU here (torch is missing or sees no CUDA device); nothing to check (exit 0).")
        return 0
    env = environment()
    label = slug(name)
    args.out.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, "CIGN_FAST_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 4), "PYTHONUNBUFFERED": "1"}
    child_env.pop("TRITON_INTERPRET", None)
    cli = [sys.executable, "-m", "cign_fast.cli"]
    plan: list[tuple[str, list[str] | None, int]] = (
        []
        if args.skip_build
        else [
            (
                "build",
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps", "-e", "."],
                200,
            )
        ]
    )
    plan += [
        ("self-check", [*cli, "info", "--check", "--json"], 60),
        ("tests", None, 150),
        ("bench ops", [*cli, "bench", "ops", "--quick", "--out", str(args.out)], 110),
        ("bench step", [*cli, "bench", "step", "--quick", "--out", str(args.out)], 70),
    ]
    budget = Budget(args.budget, len(plan))
    results = []
    for step_name, command, cap in plan:
        if command is None:
            results.append(run_tests(cap, budget, child_env))
            continue
        result, stdout = step(step_name, command, cap, budget, child_env)
        if step_name == "self-check":
            summarize_checks(result, stdout)
        results.append(result)
    summary = summary_lines(env, results, args.out, label)
    report = {"environment": env, "budget_s": args.budget, "steps": [asdict(result) for result in results]}
    (args.out / f"{label}-gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{label}-gpu-check.md").write_text(markdown(env, results, summary))
    print("\n".join(summary))
    print(f"wrote {args.out / f'{label}-gpu-check.json'} and .md")
    return int(any(result.status != "ok" for result in results))


if __name__ == "__main__":
    raise SystemExit(main())
