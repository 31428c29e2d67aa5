"""``cign-fast bench``: ``ops`` (the fused ops against eager and torch.compile) and ``step`` (training step).

``bench ops`` writes ``<gpu-name-or-cpu>-ops.json`` and ``.md`` into ``--out`` (default ``bench-results``
in the working directory); ``bench step`` hands its arguments to the training-step benchmark
``cign_fast.bench.bench_step``. The benchmarks load only when run (``--help`` imports none of them).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from functools import partial
from pathlib import Path

from cign_fast.bench.options import RESULTS, add_run_arguments

MODULES = {
    "assign_attention": "cign_fast.bench.bench_assign_attention",
    "token_distill_kl": "cign_fast.bench.bench_token_distill_kl",
    "bernoulli_distill_kl": "cign_fast.bench.bench_bernoulli_distill_kl",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    ops = which.add_parser("ops", help="fused ops vs eager and torch.compile", description=__doc__.splitlines()[0])
    add_run_arguments(
        ops,
        quick_help="only the cases with speed targets (CPU: assign_attention CIGN N=36 and GroupViT, fp32 and "
        "bf16, in every mode; token_distill_kl and bernoulli_distill_kl [384, 220] fp32)",
    )
    ops.add_argument(
        "--ops", nargs="+", choices=tuple(MODULES), default=list(MODULES), help="ops to run (default: all)"
    )
    ops.add_argument(
        "--shapes",
        nargs="+",
        metavar="SHAPE",
        help="shape names of either op's grid (default: the full grid; a wrong name lists them)",
    )
    ops.add_argument(
        "--modes",
        nargs="+",
        metavar="MODE",
        help="assign_attention modes (default: the grid's; a wrong name lists them)",
    )
    ops.add_argument(
        "--dtypes", nargs="+", metavar="DTYPE", help="dtypes (default: the grid's; a wrong name lists them)"
    )
    ops.add_argument("--note", action="append", default=[], help="a remark for the results file (repeatable)")
    ops.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default: ./{RESULTS})")
    ops.add_argument(
        "--speed-table",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the CPU speed table backend='auto' reads (point CIGN_FAST_CPU_SPEED at it, or "
        "write cign_fast/ops/cpu_speed.json); needs the reference rows (assign_attention always has them)",
    )
    # Every argument after `step` (options included: this parser has no "-" options) goes to bench_step.py.
    step = which.add_parser(
        "step", help="training-step benchmark (`step --help` for its options)", prefix_chars="+", add_help=False
    )
    step.add_argument("step_args", nargs="*", help="arguments for the training-step benchmark")


def check_names(flag: str, given: list[str] | None, known: set[str]) -> None:
    unknown = sorted(set(given or ()) - known)
    if unknown:
        raise ValueError(f"{flag}: expected names from {', '.join(sorted(known))}, got {', '.join(unknown)}")


def run_ops(args: argparse.Namespace) -> int:
    from cign_fast.bench import common

    modules = {name: importlib.import_module(path) for name, path in MODULES.items()}
    assign = modules["assign_attention"]
    check_names("--shapes", args.shapes, {shape for module in modules.values() for shape in module.SHAPES})
    check_names("--modes", args.modes, set(assign.MODES))
    check_names("--dtypes", args.dtypes, set(assign.DTYPES))
    device = common.pick_device(args.device)
    env = common.environment(device)
    sections: dict[str, list[dict]] = {}
    checks: list[dict] = []
    for name, module in modules.items():
        shapes = [shape for shape in args.shapes or () if shape in module.SHAPES]
        if name not in args.ops or (args.shapes and not shapes):
            continue
        extra = (args.modes,) if module is assign else ()
        grid = module.grid(args.quick, shapes or None, *extra, args.dtypes)
        sections[name] = common.per_thread_count(
            args.threads, partial(module.run, *grid, device, repeats=args.repeats, with_compile=not args.no_compile)
        )
        checks += module.target_checks(sections[name])
    report = common.ops_report(env, sections, checks, args.note)
    text = common.ops_markdown(report, {name: modules[name].markdown(rows) for name, rows in sections.items()})
    json_path, md_path = common.write_results(f"{common.device_label(device)}-ops", report, text, args.out)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    if args.speed_table is not None:
        from cign_fast.ops.cpu_speed import write_table

        print(f"wrote the CPU speed table {write_table(report, args.speed_table)}")
    return 0


def run_step(args: argparse.Namespace) -> int:
    from cign_fast.bench import bench_step

    return int(bench_step.main(args.step_args) or 0)


def main(args: argparse.Namespace) -> int:
    if args.benchmark == "step":
        return run_step(args)
    try:
        return run_ops(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
