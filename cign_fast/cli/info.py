"""``cign-fast info``: versions, the build record, and for each backend whether it can run here and if not why.

``--check`` also holds every backend, op and dtype against the reference on a tiny input (the
dispatcher's self-check) and prints a table; Triton on CPU needs ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import platform

from cign_fast.build_info import cuda_build_line, read_build_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser.add_argument(
        "--check",
        action="store_true",
        help="hold every backend, op and dtype against the reference on a tiny input and print a "
        "table (Triton on CPU: set TRITON_INTERPRET=1)",
    )


def collect() -> dict:
    """Versions, devices, the build record and the backend report."""
    import torch

    from cign_fast.ops.backends import auto_report, backend_report
    from cign_fast.ops.cpu_speed import table_path

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import cign_fast

    return {
        "cign_fast": cign_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "build": read_build_info(),
        "backends": backend_report(),
        "cpu_speed_table": str(table_path()),
        "cpu_auto": auto_report(),
    }


def check_table(rows: list[dict]) -> list[str]:
    """The ``--check`` rows as an aligned text table."""
    header = ("backend", "op", "device", "dtype", "max rel. error", "result")
    cells = [header] + [
        (
            row["backend"],
            row["op"],
            row["device"],
            row["dtype"],
            "-" if row["error"] is None else f"{row['error']:.1e}",
            row["result"],
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in cells
    ]


def main(args: argparse.Namespace) -> int:
    info = collect()
    if args.check:
        from cign_fast.ops.backends import check_report

        info["checks"] = check_report()
    failed = int(any(row["result"].startswith("FAILED") for row in info.get("checks", ())))
    if args.json:
        print(json.dumps(info, indent=2))
        return failed
    for key, value in info.items():
        if key not in ("backends", "build", "checks", "cpu_auto"):
            print(f"{key:>12}: {value}")
    print(f"{'build':>12}: {cuda_build_line(info['build'])}")
    print("backends (float32):")
    for name, ops in info["backends"].items():
        refusals = {op: why for op, why in ops.items() if why is not None}
        if not refusals:
            print(f"  {name:<10} usable")
            continue
        state = "unusable" if len(refusals) == len(ops) else "partly usable"
        print(f"  {name:<10} {state}")
        for op, why in refusals.items():
            print(f"  {'':<10}   {op}: {why}")
    print(f"backend='auto' on CPU at {info['cpu_threads']} thread(s) (speed table {info['cpu_speed_table']}):")
    for row in info["cpu_auto"]:
        print(f"  {row['op']:<20} {row['mode'] or '-':<6} {row['dtype']:<8} -> {row['pick']:<9} {row['why']}")
    if args.check:
        print("self-check against the reference (tiny inputs; relative error against the largest output):")
        for line in check_table(info["checks"]):
            print(f"  {line}")
    return failed
