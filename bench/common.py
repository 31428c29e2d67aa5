"""Shared pieces of the op benchmarks: timers, peak memory, providers, environment and result files.

Timing: on CUDA ``triton.testing.do_bench`` (median of many runs, caches flushed); on CPU a wall-clock
timer with warm-up and the median of repeats, the providers interleaved call by call, the thread
count set and checked before each set of cases (:func:`per_thread_count`), and the CPU time other
processes used during each case: a case run on a loaded machine (:func:`load_verdict`) is marked so in
the results and its target checks are not counted. Peak memory: ``torch.cuda.max_memory_allocated``
above what was allocated before the call on CUDA; on CPU the peak of ATen's allocations replayed
from the torch profiler's memory events (approximate: an op's allocations count at its start, and
memory the C++ kernels take outside ATen's allocator is not seen).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from cign_fast.bench.options import RESULTS, add_run_arguments  # noqa: F401  (the benchmarks use both from here)
from cign_fast.ops.backends import refusal

FUSED_BACKENDS = ("cpp", "cuda", "triton")
TIMER_NOTE = (
    "CUDA: triton.testing.do_bench median. CPU: time.perf_counter around each call, 3 warm-up calls, "
    "the providers timed in turns (one call each per round) and the median per provider; "
    "backward = median(forward+backward) - median(forward). Threads: torch.set_num_threads before each "
    "set of cases, checked with torch.get_num_threads and recorded per row."
)
LOAD_NOTE = (
    "Around every case the benchmark reads the CPU time of the whole machine (/proc/stat) and of its own "
    "process; the difference, divided by the case's wall time, is what other processes used meanwhile "
    "(in cores). A case is marked loaded when other processes used more than half the logical CPUs, or "
    "more than the cores the case left free (logical CPUs - its threads) plus 0.2. The benchmark's own "
    "earlier cases do not count, unlike a load average, which lags by a minute and counts them. The 1-minute "
    "load average before and after is recorded too. Loaded cases are reported, but their target checks are "
    "not counted: other jobs slow providers unequally (an OpenMP worker waiting for a core at each parallel "
    "region costs eager PyTorch, with many regions, more than a fused op with one)."
)
TARGETS_HEADING = "Speed targets: fused forward+backward against eager PyTorch and torch.compile"
MEMORY_NOTE = (
    "CUDA: torch.cuda.max_memory_allocated during one forward+backward minus what was allocated before. "
    "CPU: peak of ATen's allocations replayed from the torch profiler's memory events (approximate: "
    "an op's own temporaries count at its start, C++ scratch outside ATen's allocator is not seen)."
)


def device_label(device: torch.device) -> str:
    """The result files' prefix: the GPU's name as a slug (``nvidia-h200``), or ``cpu``."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return "cpu"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all CPUs, every state but idle and iowait, from
    ``/proc/stat``), or None where there is no ``/proc/stat``."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_clocks() -> tuple[float | None, float, float]:
    """(the machine's busy CPU seconds, this process's CPU seconds, wall seconds), read together."""
    return machine_busy_seconds(), time.process_time(), time.perf_counter()


def other_processes_cores(busy: float | None, own: float, wall: float) -> float | None:
    """Cores other processes used on average over an interval of ``wall`` seconds in which the machine was busy
    ``busy`` CPU seconds and this process ``own`` CPU seconds (None without a machine reading)."""
    if busy is None or wall <= 0:
        return None
    return max(0.0, busy - own) / wall


def load_verdict(other_cores: float | None, threads: int) -> str | None:
    """Why a case run with ``threads`` threads while other processes used ``other_cores`` cores on average
    counts as loaded (see ``LOAD_NOTE``), or None."""
    if other_cores is None:
        return None
    cpus = os.cpu_count() or 1
    reasons = []
    if other_cores > cpus / 2:
        reasons.append(f"other processes used {other_cores:.2f} cores > {cpus / 2:g} (half the logical CPUs)")
    free = max(0, cpus - threads)
    if other_cores > free + 0.2:
        reasons.append(
            f"other processes used {other_cores:.2f} cores > the {free} left free by {threads} threads + 0.2"
        )
    return "; ".join(reasons) or None


def measured_case(rows_of_case: Callable[[], list[dict]]) -> list[dict]:
    """The rows of one case with the load averages before and after it, the cores other processes used
    during it and the verdict (``loaded``: None, or why the case counts as loaded) added to each."""
    before = load_average()
    busy_start, own_start, wall_start = cpu_clocks()
    rows = rows_of_case()
    busy_end, own_end, wall_end = cpu_clocks()
    after = load_average()
    busy = None if busy_start is None or busy_end is None else busy_end - busy_start
    other_cores = other_processes_cores(busy, own_end - own_start, wall_end - wall_start)
    for row in rows:
        row["load_average_before"] = before
        row["load_average_after"] = after
        row["other_processes_cores"] = None if other_cores is None else round(other_cores, 3)
        row["loaded"] = load_verdict(other_cores, row.get("threads", torch.get_num_threads()))
    return rows


def environment(device: torch.device) -> dict[str, object]:
    """Device, versions, threads, date and the machine's load when the run starts."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}"
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton_version,
        },
        "platform": platform.platform(),
        "load_average_start": load_average(),
    }


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)``, compiled afresh: inductor bakes the current thread count into its CPU
    kernels, and without this a kernel cached for another thread count would be reused."""
    import torch._inductor.config

    torch._dynamo.reset()
    torch._inductor.config.force_disable_caches = True
    return torch.compile(fn, dynamic=False)


def fused_backends(op: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """The fused backends that can run ``op`` here."""
    return [name for name in FUSED_BACKENDS if refusal(name, op, device, dtype) is None]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_cpu_medians(fns: Mapping[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median wall-clock milliseconds per function. They are timed in turns (one call of each per
    round), so that a change of load on a shared machine hits every provider alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def medians_ms(
    fns: Mapping[str, Callable[[], object]], device: torch.device, warmup: int = 3, repeats: int = 15
) -> dict[str, float]:
    """Median milliseconds of one call of each function on ``device``."""
    if device.type == "cuda":
        import triton.testing

        return {
            name: float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
            for name, fn in fns.items()
        }
    return interleaved_cpu_medians(fns, warmup, repeats)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory one call of ``fn`` allocates on top of what was allocated before it, in MiB."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((event.time_range.start, event.self_cpu_memory_usage) for event in prof.events())
    running = peak = 0
    for _, delta in deltas:
        running += delta
        peak = max(peak, running)
    return peak / 2**20


def speedups(times: Mapping[str, float | None], own_ms: float | None) -> dict[str, float | None]:
    """``{"vs_eager": eager time / own_ms, "vs_compile": ...}`` from the providers' ``times`` (None if unknown)."""
    return {
        f"vs_{name}": theirs / own_ms if (theirs := times.get(name)) and own_ms else None
        for name in ("eager", "compile")
    }


def write_results(stem: str, report: dict, markdown: str, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``.md``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def environment_markdown(env: dict) -> list[str]:
    """The header lines every results file starts with."""
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items() if version)
    return [
        f"- date (UTC): {env['date_utc']}",
        f"- device: {env['device']} ({env['logical_cpus']} logical CPUs); torch threads {env['torch_threads']}",
        f"- versions: {versions}",
        f"- load average (1/5/15 min) at start {env['load_average_start']}, at end {env.get('load_average_end')}",
    ]


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def pick_device(name: str | None) -> torch.device:
    """The benchmark device: ``name``, else CUDA when torch sees one, else the CPU."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: cuda was requested but torch sees no CUDA device")
    return device


def per_thread_count(threads: list[int] | None, run: Callable[[], list[dict]]) -> list[dict]:
    """The rows of ``run()`` once per torch thread count in ``threads`` (once, as set, when None); the
    count is set, checked (torch may refuse one) and set back afterwards."""
    rows: list[dict] = []
    initial = torch.get_num_threads()
    try:
        for count in threads or [initial]:
            if count < 1:
                raise ValueError(f"--threads: expected positive integers, got {count}")
            torch.set_num_threads(count)
            if torch.get_num_threads() != count:
                raise RuntimeError(f"torch.set_num_threads({count}) left {torch.get_num_threads()} threads")
            rows += run()
    finally:
        torch.set_num_threads(initial)
    return rows


def shape_dtype_main(
    argv: list[str] | None, doc: str, quick_help: str, shapes: dict, dtypes: dict, grid: Callable, run: Callable
) -> list[dict]:
    """The command line of an op benchmark over shapes and dtypes (``grid(quick, shapes, dtypes)`` picks
    the cases, ``run(shapes, dtypes, device, repeats=...)`` measures them): parses ``argv`` and returns
    the rows of every case, once per thread count asked for."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_run_arguments(parser, quick_help=quick_help)
    parser.add_argument("--shapes", nargs="+", choices=sorted(shapes), help="shapes (default: all)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(dtypes), help="dtypes (default: all)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    cases_grid = grid(args.quick, args.shapes, args.dtypes)
    return per_thread_count(
        args.threads, lambda: run(*cases_grid, device, repeats=args.repeats, with_compile=not args.no_compile)
    )


def ops_report(env: dict, sections: dict[str, list[dict]], checks: list[dict], notes: list[str]) -> dict:
    """The JSON of ``cign-fast bench ops``: environment, one list of rows per op, the target checks, notes."""
    env = {**env, "load_average_end": load_average()}
    rows = [row for section in sections.values() for row in section]
    loaded = [  # one line per case
        f"{row['op']} {row.get('shape')} {row.get('mode', '')} {row['dtype']} {row['threads']} threads: {row['loaded']}"
        for row in rows
        if row.get("loaded") and row["provider"] == "eager"
    ]
    return {
        "environment": env,
        "loaded": loaded,
        "timer": TIMER_NOTE,
        "load": LOAD_NOTE,
        "peak_memory": MEMORY_NOTE,
        **sections,
        "targets": checks,
        "notes": notes,
    }


def targets_markdown(checks: list[dict]) -> list[str]:
    if not checks:
        return ["No target case was run (targets: the CPU fp32 cases of `--quick`)."]
    lines = ["| op | provider | case | metric | target | measured | met |", "|---|---|---|---|---:|---:|---|"]
    for check in checks:
        met = "yes" if check["met"] else f"no, {check['shortfall_percent']:.0f} % short"
        if not check.get("counted", True):
            met = f"not counted (loaded): {met}"
        lines.append(
            f"| {check['op']} | {check['provider']} | {check['case']} | {check['metric']} | "
            f"{check['target']:.1f}x | {format_ratio(check['measured'])} | {met} |"
        )
    return lines


def ops_markdown(report: dict, tables: dict[str, list[str]]) -> str:
    """The ``.md`` twin of :func:`ops_report`; ``tables`` holds each op's table lines."""
    env = report["environment"]
    lines = [
        f"# Fused ops benchmark: {env['device']}",
        "",
        *loaded_banner(report.get("loaded", [])),
        *environment_markdown(env),
        "",
        f"Timer: {report['timer']}",
        "",
        f"Load: {report.get('load', LOAD_NOTE)}",
        "",
        f"Peak memory: {report['peak_memory']}",
        "",
        "A fused backend's `<name>` rows are the public function (`cign_fast.assign_attention(..., backend=name)`: "
        "argument checks, the dispatcher, the custom op and its autograd node), `<name>-op` the custom op alone; "
        "the public function's overhead over the op is in its own column. "
        "assign_attention's `products` rows are its six matrix products alone in eager PyTorch "
        "(`(scale q k^T) v`, forward and backward, no softmax, argmax or normalisation): what any kernel "
        "built on the same products spends at least, so eager / products bounds the speedup of fusing the rest "
        "(hard and gumbel modes can replace two products by a gather and go below it). "
        "Speedups are eager or compile time divided by the provider's time. "
        "GB/s at floor: the bytes of the memory floor (every input read once, every output written once) "
        "divided by the time.",
        "",
        f"## {TARGETS_HEADING}",
        "",
        *targets_markdown(report["targets"]),
    ]
    if report["notes"]:
        lines += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    for name, table in tables.items():
        lines += ["", f"## {name}", "", *table]
    lines += ["", "The machine may be shared with other jobs (see the load averages): treat the numbers as indicative."]
    return "\n".join(lines) + "\n"


def loaded_banner(loaded: list[str]) -> list[str]:
    """The results file's warning lines when some cases ran on a loaded machine (none otherwise)."""
    if not loaded:
        return []
    return [
        "**LOADED MACHINE: the cases below ran with the load average above half the logical CPUs; their "
        "numbers are indicative only and are not counted against the targets.**",
        "",
        *(f"- loaded: {line}" for line in loaded),
        "",
    ]


def target_check(op: str, row: dict, case: str, key: str, target: float) -> dict:
    """One row of a results file's target table: ``row[f"forward_backward_{key}"]`` against ``target``;
    not counted (``counted`` False) when the row's case ran on a loaded machine."""
    got = row[f"forward_backward_{key}"]
    return {
        "counted": not row.get("loaded"),
        "op": op,
        "provider": row["provider"],
        "case": case,
        "metric": f"speedup {key.replace('_', ' ')}",
        "target": target,
        "measured": got,
        "met": got is not None and got >= target,
        "shortfall_percent": None if got is None or got >= target else 100 * (1 - got / target),
    }
