"""``cign-fast bench``: ``ops`` (the fused ops against eager and torch.compile) and ``step`` (training step).

``bench ops`` writes ``bench/results/<gpu-name-or-cpu>-ops.json`` and ``.md`` (``--out`` for another
folder); ``bench step`` hands its arguments to the training-step benchmark ``bench/bench_step.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cign_fast.bench import bench_assign_attention, bench_token_distill_kl, common

MODULES = {"assign_attention": bench_assign_attention, "token_distill_kl": bench_token_distill_kl}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    ops = which.add_parser("ops", help="fused ops vs eager and torch.compile", description=__doc__.splitlines()[0])
    common.add_run_arguments(ops, quick_help="only the issue-4 target cases (CPU: assign_attention CIGN N=36 fp32 "
                                             "in every mode, token_distill_kl [384, 220] fp32)")
    ops.add_argument("--ops", nargs="+", choices=tuple(MODULES), default=list(MODULES), help="ops to run (default: both)")
    ops.add_argument("--shapes", nargs="+", choices=sorted({*bench_assign_attention.SHAPES, *bench_token_distill_kl.SHAPES}),
                     help="shapes to run (default: the full grid; names of both ops may be mixed)")
    ops.add_argument("--modes", nargs="+", choices=bench_assign_attention.MODES, help="assign_attention modes")
    ops.add_argument("--dtypes", nargs="+", choices=sorted(bench_assign_attention.DTYPES), help="dtypes")
    ops.add_argument("--note", action="append", default=[], help="a remark for the results file (repeatable)")
    ops.add_argument("--out", type=Path, default=common.RESULTS, help=f"results folder (default {common.RESULTS})")
    # Every argument after `step` (options included: this parser has no "-" options) goes to bench_step.py.
    step = which.add_parser("step", help="training-step benchmark (bench/bench_step.py; `step --help` for its options)",
                            prefix_chars="+", add_help=False)
    step.add_argument("step_args", nargs="*", help="arguments for bench/bench_step.py")


def run_ops(args: argparse.Namespace) -> int:
    device = common.pick_device(args.device)
    env = common.environment(device)
    sections: dict[str, list[dict]] = {}
    checks: list[dict] = []
    for name, module in MODULES.items():
        shapes = [shape for shape in args.shapes or () if shape in module.SHAPES]
        if name not in args.ops or (args.shapes and not shapes):
            continue
        extra = (args.modes,) if module is bench_assign_attention else ()
        grid = module.grid(args.quick, shapes or None, *extra, args.dtypes)
        sections[name] = common.per_thread_count(args.threads, lambda: module.run(*grid, device, repeats=args.repeats))
        checks += module.target_checks(sections[name])
    report = common.ops_report(env, sections, checks, args.note)
    text = common.ops_markdown(report, {name: MODULES[name].markdown(rows) for name, rows in sections.items()})
    json_path, md_path = common.write_results(f"{common.device_label(device)}-ops", report, text, args.out)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


def run_step(args: argparse.Namespace) -> int:
    from cign_fast.bench import bench_step  # builds models: imported only when asked for

    return int(bench_step.main(args.step_args) or 0)


def main(args: argparse.Namespace) -> int:
    return run_ops(args) if args.benchmark == "ops" else run_step(args)
