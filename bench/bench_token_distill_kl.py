"""token_distill_kl benchmark: eager reference, torch.compile(reference) and every fused backend here.

The measurement is shared with ``bench_bernoulli_distill_kl`` (a :class:`DistillOp` names the op's functions).
One measurement per shape and dtype: the loss and the student's gradient (forward + backward; the
fused op computes both in its forward, its backward only scales the gradient). ``<backend>-direct``
rows call the backend's function itself, without the custom op and autograd around it (their fixed
cost dominates at small sizes), ``<backend>-op`` the custom op ``cign_fast::token_distill_kl_fwd``
and its autograd node, ``<backend>`` the public ``cign_fast.token_distill_kl(..., backend=name)``.
Reported with the speedups over eager and compile, the bandwidth implied by the memory floor (the
distilled columns of student and teacher read once, the gradient written once) and the peak memory.

    python -m cign_fast.bench.bench_token_distill_kl [--quick] [--threads 2]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from cign_fast.bench import common
from cign_fast.ops.backends import backend_function
from cign_fast.ops.reference import token_distill_kl_reference
from cign_fast.ops.token_distill_kl import token_distill_kl, token_distill_kl_fwd

OP = "token_distill_kl_forward"
TEMPERATURE = 2.0
# name -> (R, K); the old classes distilled are the first 90 %
SHAPES = {"heads-384x220": (384, 220), "rows-65536x309": (65536, 309)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QUICK = {"shapes": ("heads-384x220",), "dtypes": ("fp32",)}
TARGET_SHAPE, TARGET_DTYPE = "heads-384x220", "fp32"
TARGETS = {"vs_eager": 1.5}
DIRECT = "-direct"  # provider suffix: the backend function called directly (loss and gradient in one call)
OP_SUFFIX = "-op"  # provider suffix: the custom op alone, without the public function around it


@dataclass(frozen=True)
class DistillOp:
    """A distillation op's functions, as the benchmark calls them."""

    name: str  # the public function's name, e.g. "token_distill_kl"
    op: str  # the backends' function name, e.g. "token_distill_kl_forward"
    reference: Callable  # (student, teacher, *, temperature, columns) -> loss
    public: Callable  # (student, teacher, *, temperature, columns, backend) -> loss
    fwd: Callable  # the custom op: (student, teacher, start, stop, temperature, reduction, backend) -> (loss, ...)


TOKEN = DistillOp("token_distill_kl", OP, token_distill_kl_reference, token_distill_kl, token_distill_kl_fwd)


def distilled_columns(width: int) -> tuple[int, int]:
    return 0, max(1, width * 9 // 10)


def providers(
    device: torch.device,
    dtype: torch.dtype,
    columns: tuple[int, int],
    with_compile: bool = True,
    spec: DistillOp = TOKEN,
) -> dict[str, Callable]:
    """name -> fn(student, teacher) returning the scalar loss, differentiable in student: ``<backend>`` the
    public function, ``<backend>-op`` the custom op alone."""

    def eager(student, teacher):
        return spec.reference(student, teacher, temperature=TEMPERATURE, columns=slice(*columns))

    found: dict[str, Callable] = {"eager": eager, **({"compile": common.compiled(eager)} if with_compile else {})}
    for name in ("reference", *common.fused_backends(spec.op, device, dtype)):
        found[name] = lambda student, teacher, name=name: spec.public(
            student, teacher, temperature=TEMPERATURE, columns=slice(*columns), backend=name
        )
        if name == "reference":  # the fallback of backend="auto", for the speed table
            continue
        found[name + OP_SUFFIX] = (
            lambda backend: (
                lambda student, teacher: spec.fwd(student, teacher, *columns, TEMPERATURE, "batchmean", backend)[0]
            )
        )(name)
    return found


def floor_bytes(rows: int, width: int, columns: tuple[int, int], dtype: torch.dtype) -> int:
    size = torch.finfo(dtype).bits // 8
    return (2 * rows * (columns[1] - columns[0]) + rows * width) * size


def run_case(
    shape_name: str,
    dtype_name: str,
    device: torch.device,
    repeats: int,
    with_compile: bool = True,
    spec: DistillOp = TOKEN,
) -> list[dict]:
    rows, width = SHAPES[shape_name]
    dtype = DTYPES[dtype_name]
    columns = distilled_columns(width)
    generator = torch.Generator(device="cpu").manual_seed(0)
    student = (3 * torch.randn(rows, width, generator=generator)).to(device, dtype).requires_grad_()
    teacher = (3 * torch.randn(rows, width, generator=generator)).to(device, dtype)
    found = providers(device, dtype, columns, with_compile, spec)
    with torch.no_grad():
        expected = found["eager"](student, teacher).item()
        errors = {name: abs(fn(student, teacher).item() - expected) for name, fn in found.items()}
    loss_and_grad = {
        name: (lambda fn=fn: torch.autograd.grad(fn(student, teacher), student)) for name, fn in found.items()
    }
    for name in common.fused_backends(spec.op, device, dtype):  # the backend's function alone: no op, no autograd
        direct = backend_function(name, spec.op)
        loss_and_grad[f"{name}{DIRECT}"] = lambda direct=direct: direct(
            student.detach(), teacher, *columns, TEMPERATURE, "batchmean"
        )
        errors[f"{name}{DIRECT}"] = abs(loss_and_grad[f"{name}{DIRECT}"]()[0].item() - expected)
    times = common.medians_ms(loss_and_grad, device, repeats=repeats)
    floor = floor_bytes(rows, width, columns, dtype)
    results = []
    for name in loss_and_grad:
        ms = times[name]
        results.append(
            {
                "op": spec.name,
                "shape": shape_name,
                "R_K": [rows, width],
                "columns": list(columns),
                "dtype": dtype_name,
                "threads": torch.get_num_threads(),
                "provider": name,
                "abs_diff_vs_eager": errors[name],
                "forward_backward_ms": ms,
                "forward_backward_floor_gbps": floor / ms / 1e6,
                "peak_memory_mb": common.peak_memory_mb(loss_and_grad[name], device),
                **{f"forward_backward_{key}": value for key, value in common.speedups(times, ms).items()},
            }
        )
    return results


def run(
    shapes: tuple[str, ...],
    dtypes: tuple[str, ...],
    device: torch.device,
    repeats: int = 20,
    progress: Callable[[str], None] = print,
    with_compile: bool = True,
    spec: DistillOp = TOKEN,
) -> list[dict]:
    results = []
    for shape in shapes:
        for dtype in dtypes:
            progress(f"{spec.name} {shape} {dtype} {torch.get_num_threads()} threads")
            results.extend(common.measured_case(partial(run_case, shape, dtype, device, repeats, with_compile, spec)))
    return results


def target_checks(rows: list[dict], spec: DistillOp = TOKEN) -> list[dict]:
    """The speed target: the public function's loss + gradient at [384, 220] fp32 at least 1.5x eager."""
    checks = []
    for row in rows:
        if (
            row["provider"] in ("eager", "compile", "reference")
            or row["provider"].endswith((DIRECT, OP_SUFFIX))
            or (row["shape"], row["dtype"]) != (TARGET_SHAPE, TARGET_DTYPE)
        ):
            continue
        for key, target in TARGETS.items():
            checks.append(
                common.target_check(
                    spec.name, row, f"{row['shape']} fp32 loss+grad, {row['threads']} threads", key, target
                )
            )
    return checks


def markdown(rows: list[dict]) -> list[str]:
    lines = [
        "| shape (R,K) | columns | dtype | threads | provider | loss+grad ms | vs eager | vs compile | GB/s at floor | "
        "peak MiB | abs diff |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['shape']} ({row['R_K'][0]},{row['R_K'][1]}) | {row['columns'][0]}:{row['columns'][1]} | "
            f"{row['dtype']} | {row['threads']} | {row['provider']} | {common.format_ms(row['forward_backward_ms'])} | "
            f"{common.format_ratio(row['forward_backward_vs_eager'])} | "
            f"{common.format_ratio(row['forward_backward_vs_compile'])} | {row['forward_backward_floor_gbps']:.1f} | "
            f"{row['peak_memory_mb']:.1f} | {row['abs_diff_vs_eager']:.2e} |"
        )
    return lines


def grid(
    quick: bool, shapes: list[str] | None = None, dtypes: list[str] | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(shapes, dtypes): the ones given, else the quick set or the full grid."""
    return (
        tuple(shapes or (QUICK["shapes"] if quick else SHAPES)),
        tuple(dtypes or (QUICK["dtypes"] if quick else DTYPES)),
    )


def main(argv: list[str] | None = None) -> int:
    rows = common.shape_dtype_main(
        argv, __doc__, "only the case with a speed target ([384, 220] fp32)", SHAPES, DTYPES, grid, run
    )
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
