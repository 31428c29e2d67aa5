"""bernoulli_distill_kl benchmark: eager reference, torch.compile(reference) and every fused backend here.

The measurement of ``bench_token_distill_kl`` (its shapes, dtypes, columns, providers, table, memory floor and
speed target) for the per-class Bernoulli KL, CIGN's default head distillation: the loss and the student's
gradient (forward + backward; the fused op computes both in its forward, its backward only scales the
gradient). ``cign-fast bench ops`` runs it with the other ops.

    python -m cign_fast.bench.bench_bernoulli_distill_kl [--quick] [--threads 2]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cign_fast.bench import bench_token_distill_kl as shared
from cign_fast.bench import common
from cign_fast.bench.bench_token_distill_kl import DTYPES, SHAPES, grid, markdown
from cign_fast.ops.bernoulli_distill_kl import OP, bernoulli_distill_kl, bernoulli_distill_kl_fwd
from cign_fast.ops.reference import bernoulli_distill_kl_reference

__all__ = ["DTYPES", "SHAPES", "grid", "markdown", "run", "target_checks"]
BERNOULLI = shared.DistillOp(
    "bernoulli_distill_kl", OP, bernoulli_distill_kl_reference, bernoulli_distill_kl, bernoulli_distill_kl_fwd
)


def run(
    shapes: tuple[str, ...],
    dtypes: tuple[str, ...],
    device: torch.device,
    repeats: int = 20,
    progress: Callable[[str], None] = print,
    with_compile: bool = True,
) -> list[dict]:
    return shared.run(shapes, dtypes, device, repeats, progress, with_compile, BERNOULLI)


def target_checks(rows: list[dict]) -> list[dict]:
    return shared.target_checks(rows, BERNOULLI)


def main(argv: list[str] | None = None) -> int:
    rows = common.shape_dtype_main(
        argv, __doc__, "only the case with a speed target ([384, 220] fp32)", SHAPES, DTYPES, grid, run
    )
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
