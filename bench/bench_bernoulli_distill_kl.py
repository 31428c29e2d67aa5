"""bernoulli_distill_kl benchmark: eager reference, torch.compile(reference) and every fused backend here.

The measurement of ``bench_token_distill_kl`` (its shapes, dtypes, columns, table and memory floor)
for the per-class Bernoulli KL: the loss and the student's gradient (forward + backward; the fused
op computes both in its forward, its backward only scales the gradient). ``<backend>-direct`` rows
call the backend's function itself, without the custom op and autograd around it. Fused backends
are timed through the custom op ``cign_fast::bernoulli_distill_kl_fwd`` (argument validation, a
NaN/inf scan of the inputs, is not part of the op and not timed). No targets: the results are
printed, not written.

    python bench/bench_bernoulli_distill_kl.py [--quick] [--threads 2]
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from cign_fast.bench import common
from cign_fast.bench.bench_token_distill_kl import DTYPES, SHAPES, distilled_columns, floor_bytes, grid, markdown
from cign_fast.ops.backends import backend_function
from cign_fast.ops.bernoulli_distill_kl import OP, bernoulli_distill_kl_fwd
from cign_fast.ops.reference import bernoulli_distill_kl_reference

TEMPERATURE = 2.0


def loss_functions(
    device: torch.device, dtype: torch.dtype, columns: tuple[int, int], with_compile: bool = True
) -> dict[str, Callable]:
    """provider -> fn(student, teacher) returning the scalar loss, differentiable in student: eager,
    compile and each fused backend through the custom op."""

    def eager(student, teacher):
        return bernoulli_distill_kl_reference(student, teacher, temperature=TEMPERATURE, columns=slice(*columns))

    found: dict[str, Callable] = {"eager": eager, **({"compile": common.compiled(eager)} if with_compile else {})}
    for name in common.fused_backends(OP, device, dtype):
        found[name] = lambda student, teacher, name=name: bernoulli_distill_kl_fwd(
            student, teacher, *columns, TEMPERATURE, "batchmean", name
        )[0]
    return found


def run_case(
    shape_name: str, dtype_name: str, device: torch.device, repeats: int, with_compile: bool = True
) -> list[dict]:
    rows, width = SHAPES[shape_name]
    dtype = DTYPES[dtype_name]
    columns = distilled_columns(width)
    generator = torch.Generator(device="cpu").manual_seed(0)
    student = (3 * torch.randn(rows, width, generator=generator)).to(device, dtype).requires_grad_()
    teacher = (3 * torch.randn(rows, width, generator=generator)).to(device, dtype)
    losses = loss_functions(device, dtype, columns, with_compile)
    timed = {name: (lambda fn=fn: torch.autograd.grad(fn(student, teacher), student)) for name, fn in losses.items()}
    for name in common.fused_backends(OP, device, dtype):  # the backend's function alone: no custom op, no autograd
        direct = backend_function(name, OP)
        timed[f"{name}-direct"] = lambda direct=direct: direct(
            student.detach(), teacher, *columns, TEMPERATURE, "batchmean"
        )
    with torch.no_grad():
        expected = losses["eager"](student, teacher).item()
        loss_of = {
            **{name: fn(student, teacher) for name, fn in losses.items()},
            **{name: fn()[0] for name, fn in timed.items() if name.endswith("-direct")},
        }
    times = common.medians_ms(timed, device, repeats=repeats)
    floor = floor_bytes(rows, width, columns, dtype)
    return [
        {
            "op": "bernoulli_distill_kl",
            "shape": shape_name,
            "R_K": [rows, width],
            "columns": list(columns),
            "dtype": dtype_name,
            "threads": torch.get_num_threads(),
            "provider": name,
            "abs_diff_vs_eager": abs(loss_of[name].item() - expected),
            "forward_backward_ms": ms,
            "forward_backward_floor_gbps": floor / ms / 1e6,
            "peak_memory_mb": common.peak_memory_mb(timed[name], device),
            **{f"forward_backward_{key}": value for key, value in common.speedups(times, ms).items()},
        }
        for name, ms in times.items()
    ]


def run(
    shapes: tuple[str, ...],
    dtypes: tuple[str, ...],
    device: torch.device,
    repeats: int = 20,
    progress: Callable[[str], None] = print,
    with_compile: bool = True,
) -> list[dict]:
    results = []
    for shape in shapes:
        for dtype in dtypes:
            progress(f"bernoulli_distill_kl {shape} {dtype} {torch.get_num_threads()} threads")
            results.extend(common.measured_case(partial(run_case, shape, dtype, device, repeats, with_compile)))
    return results


def main(argv: list[str] | None = None) -> int:
    rows = common.shape_dtype_main(
        argv, __doc__, "only [384, 220] fp32 (CIGN's heads at 220 classes)", SHAPES, DTYPES, grid, run
    )
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
