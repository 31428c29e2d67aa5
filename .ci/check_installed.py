"""For .ci/install-check: the installed cign_fast, its benchmarks and each backend module import from PREFIX.

Usage: python check_installed.py PREFIX  (run from outside the source tree). The CUDA backend must be
absent (the matrix builds with CIGN_FAST_CUDA=0); every other backend must import.
"""

import importlib
import sys
from pathlib import Path

import cign_fast
from cign_fast.ops.backends import BACKENDS, load_backend

BENCHMARKS = (
    "common",
    "bench_assign_attention",
    "bench_token_distill_kl",
    "bench_bernoulli_distill_kl",
    "bench_step",
    "bench_loader",
)


def located(module, prefix: Path) -> None:
    path = Path(module.__file__).resolve()
    if prefix not in path.parents:
        sys.exit(f"{module.__name__} was imported from {path}, expected under {prefix}")


def main(prefix: Path) -> None:
    located(cign_fast, prefix)
    for name in BENCHMARKS:
        located(importlib.import_module(f"cign_fast.bench.{name}"), prefix)
    for name, spec in BACKENDS.items():
        module, why = load_backend(name)
        if name == "cuda":
            if module is not None:
                sys.exit("the cuda backend imported, but the matrix builds with CIGN_FAST_CUDA=0")
            continue
        if module is None:
            sys.exit(f"backend {name} ({spec.module}) {why}")
        located(module, prefix)
    print(
        f"cign_fast {cign_fast.__version__} from {Path(cign_fast.__file__).parent}: "
        f"{', '.join(n for n in BACKENDS if n != 'cuda')} import; benchmarks import"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
