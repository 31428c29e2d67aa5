"""What the benchmarks' command lines share, importable without torch (``cign-fast bench --help`` uses it)."""

from __future__ import annotations

import argparse
from pathlib import Path

# Results go to the working directory, never into the installed package; the repository's committed
# results are in bench/results/.
RESULTS = Path("bench-results")


def add_run_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """Options every op benchmark takes: --quick, --device, --threads, --repeats."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when torch sees one)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch.set_num_threads before running; several values run everything once per value",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per measurement on CPU (default 20)")
    parser.add_argument(
        "--no-compile", action="store_true", help="leave out the torch.compile baseline (its compilation is slow)"
    )
