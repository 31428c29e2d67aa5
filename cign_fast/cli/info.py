"""``cign-fast info``: versions, and for each backend whether it can run here and if not why."""

from __future__ import annotations

import argparse
import json
import platform

from cign_fast.build_info import cuda_build_line, read_build_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def collect() -> dict:
    """Versions, devices, the build record and the backend report."""
    import torch

    from cign_fast.ops.backends import backend_report

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
    }


def main(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key not in ("backends", "build"):
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
    return 0
