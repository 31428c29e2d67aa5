"""assign_attention benchmark: the authors' code in eager PyTorch, torch.compile of it and every fused backend.

The baseline ``eager`` is the eager twin of the authors' AssignAttention (GroupViT's, which CIGN
uses): six lines of PyTorch in the inputs' dtype (:func:`authors_eager`). For each shape, mode and
dtype: median forward, forward+backward and (their difference) backward times, speedups over eager
and over compile, the bandwidth the time implies for the memory floor (each input read once, each
output written once), the spec's GFLOP/s (2 products forward, 4 backward) and the peak memory of a
forward+backward. ``products`` times the op's matrix products alone (:func:`matrix_products`): the floor
of a kernel built on them, so eager / products bounds what fusing the rest can gain. Each fused backend
is timed twice: ``<name>`` through the public ``cign_fast.assign_attention(..., backend=name)`` (what a
model calls) and ``<name>-op`` through the custom op ``cign_fast::assign_attention_fwd`` alone; the
difference is the public function's overhead.

    python -m cign_fast.bench.bench_assign_attention [--quick] [--shapes cign-n36 ...] [--threads 2]

``cign-fast bench ops`` runs this and the distillation benchmark and writes the results files.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from cign_fast.bench import common
from cign_fast.contract import MODES, AssignParams
from cign_fast.ops.assign_attention import assign_attention, assign_attention_fwd, op_options

OP = "assign_attention_forward"
SEED = 1234
# name -> (B, N, S, C)
SHAPES = {
    "cign-n9": (128, 9, 49, 512),
    "cign-n36": (128, 36, 49, 512),
    "cign-n100": (128, 100, 49, 512),
    "cign-n220": (128, 220, 49, 512),
    "groupvit": (64, 64, 196, 384),
    "stress": (8, 256, 4096, 512),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GRID_MODES = ("soft", "gumbel")
QUICK = {"shapes": ("cign-n36", "groupvit"), "modes": MODES, "dtypes": ("fp32", "bf16")}
TARGET_SHAPES, TARGET_DTYPES = ("cign-n36", "groupvit"), ("fp32", "bf16")
TARGETS = {"vs_eager": 1.5}  # the public function's forward+backward speedup at the target cases
OP_SUFFIX = "-op"  # provider suffix: the custom op alone, without the public function around it
PRODUCTS = "products"  # provider: the matrix products alone (a floor, not an implementation of the op)


@dataclass(frozen=True)
class Case:
    shape_name: str
    mode: str
    dtype_name: str

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return SHAPES[self.shape_name]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]


def floor_bytes(case: Case) -> dict[str, int]:
    """Bytes the op must move at least: inputs read once, outputs written once (statistics included)."""
    batch, groups, tokens, channels = case.shape
    size = torch.finfo(case.dtype).bits // 8
    q_bytes, kv_bytes = batch * groups * channels * size, batch * tokens * channels * size
    stats = batch * tokens * 8 + batch * groups * 4  # col_lse, col_argmax, row_sum
    forward = 2 * q_bytes + 2 * kv_bytes + stats  # q, k, v -> out
    backward = 2 * q_bytes + 2 * kv_bytes + stats + q_bytes + 2 * kv_bytes  # dout, q, k, v -> dq, dk, dv
    return {"forward": forward, "backward": backward, "forward_backward": forward + backward}


def spec_flops(case: Case) -> dict[str, int]:
    """The spec's matrix-product FLOPs: q k^T and A_n v forward, four products backward."""
    batch, groups, tokens, channels = case.shape
    product = 2 * batch * groups * tokens * channels
    return {"forward": 2 * product, "backward": 4 * product, "forward_backward": 6 * product}


def authors_eager(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str, tau: float = 1.0, eps: float = 1.0
) -> torch.Tensor:
    """The authors' AssignAttention core as eager PyTorch in the inputs' dtype: q k^T scaled, softmax over
    the groups (Gumbel noise from torch's generator first in gumbel mode, as ``F.gumbel_softmax``), the
    one-hot of the argmax with the straight-through gradient, the normalisation over tokens, A v."""
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mode == "gumbel":
        logits = logits - torch.empty_like(logits).exponential_().log()
    y = torch.softmax(logits / tau, dim=-2)
    if mode != "soft":
        y = torch.zeros_like(y).scatter_(-2, y.argmax(dim=-2, keepdim=True), 1.0) - y.detach() + y
    return (y / (y.sum(dim=-1, keepdim=True) + eps)) @ v


def matrix_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(scale q k^T) v`` [B, N, C] in the inputs' dtype: assign_attention's matrix products alone (two
    forward, four backward) without the map between them, the floor of any kernel built on them."""
    return ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5) @ v


def providers(case: Case, device: torch.device, with_compile: bool = True) -> dict[str, Callable]:
    """name -> fn(q, k, v) returning out [B, N, C], differentiable."""
    mode = case.mode

    def eager(q, k, v):
        return authors_eager(q, k, v, mode)

    found: dict[str, Callable] = {"eager": eager, PRODUCTS: matrix_products}
    if with_compile:
        found["compile"] = common.compiled(eager)
    options = op_options(AssignParams(mode=MODES.index(mode), seed=SEED))
    seed = torch.tensor(SEED, dtype=torch.int64)  # the op takes a 0-d CPU seed tensor
    for name in ("reference", *common.fused_backends(OP, device, case.dtype)):
        found[name] = (
            lambda backend: lambda q, k, v: assign_attention(q, k, v, mode=mode, seed=SEED, backend=backend)
        )(name)
        if name == "reference":  # the fallback of backend="auto", for the speed table
            continue
        found[name + OP_SUFFIX] = (
            lambda backend: lambda q, k, v: assign_attention_fwd(q, k, v, seed, *options, backend)[0]
        )(name)
    return found


def make_inputs(case: Case, device: torch.device) -> tuple[torch.Tensor, ...]:
    batch, groups, tokens, channels = case.shape
    generator = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (
        torch.randn(batch, n, channels, generator=generator).to(device, case.dtype).requires_grad_()
        for n in (groups, tokens, tokens)
    )
    grad_out = torch.randn(batch, groups, channels, generator=generator).to(device, case.dtype)
    return q, k, v, grad_out


def run_case(case: Case, device: torch.device, repeats: int, with_compile: bool = True) -> list[dict]:
    """One row per provider for ``case``."""
    q, k, v, grad_out = make_inputs(case, device)
    found = providers(case, device, with_compile)
    with torch.no_grad():  # the eager twin draws its noise from torch's generator: no gumbel comparison
        expected = found["eager"](q, k, v).float()
        errors = {
            name: None
            if case.mode == "gumbel" or name == PRODUCTS
            else (fn(q, k, v).float() - expected).abs().max().item()
            for name, fn in found.items()
        }
    forward = {name: (lambda fn=fn: fn(q, k, v)) for name, fn in found.items()}
    both = {name: (lambda fn=fn: torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)) for name, fn in found.items()}
    forward_ms = common.medians_ms(forward, device, repeats=repeats)
    both_ms = common.medians_ms(both, device, repeats=repeats)
    # backward = the difference of two medians; None when load made it negative (a forward-median outlier)
    parts: dict[str, dict[str, float | None]] = {
        "forward": dict(forward_ms),
        "forward_backward": dict(both_ms),
        "backward": {
            name: both_ms[name] - forward_ms[name] if both_ms[name] > forward_ms[name] else None for name in found
        },
    }
    floors, flops = floor_bytes(case), spec_flops(case)
    rows = []
    for name in found:
        row = {
            "op": "assign_attention",
            "shape": case.shape_name,
            "B_N_S_C": list(case.shape),
            "mode": case.mode,
            "dtype": case.dtype_name,
            "threads": torch.get_num_threads(),
            "provider": name,
            "max_abs_diff_vs_eager": errors[name],
            "peak_memory_mb": common.peak_memory_mb(both[name], device),
        }
        for part, times in parts.items():
            ms = times[name]
            row[f"{part}_ms"] = ms
            row[f"{part}_floor_gbps"] = floors[part] / ms / 1e6 if ms else None
            row[f"{part}_gflops"] = flops[part] / ms / 1e6 if ms else None
            for key, value in common.speedups(times, ms).items():
                row[f"{part}_{key}"] = value
        op_ms = parts["forward_backward"].get(name + OP_SUFFIX)
        row["public_overhead_percent"] = 100 * (both_ms[name] / op_ms - 1) if op_ms else None
        rows.append(row)
    return rows


def cases(shapes: tuple[str, ...], modes: tuple[str, ...], dtypes: tuple[str, ...]) -> list[Case]:
    return [Case(shape, mode, dtype) for shape in shapes for dtype in dtypes for mode in modes]


def run(
    shapes: tuple[str, ...],
    modes: tuple[str, ...],
    dtypes: tuple[str, ...],
    device: torch.device,
    repeats: int = 20,
    progress: Callable[[str], None] = print,
    with_compile: bool = True,
) -> list[dict]:
    """Rows for every case and provider, each case with the load averages around it (``common.measured_case``)."""
    rows = []
    for case in cases(shapes, modes, dtypes):
        progress(f"assign_attention {case.shape_name} {case.mode} {case.dtype_name} {torch.get_num_threads()} threads")
        rows.extend(common.measured_case(partial(run_case, case, device, repeats, with_compile)))
    return rows


def target_checks(rows: list[dict]) -> list[dict]:
    """The speed targets: the public function's forward+backward at the CIGN N=36 and GroupViT shapes in fp32
    and bf16, every mode and thread count measured."""
    checks = []
    for row in rows:
        if (
            row["provider"] in ("eager", "compile", "reference", PRODUCTS)
            or row["provider"].endswith(OP_SUFFIX)
            or row["shape"] not in TARGET_SHAPES
            or row["dtype"] not in TARGET_DTYPES
        ):
            continue
        for key, target in TARGETS.items():
            checks.append(
                common.target_check(
                    "assign_attention",
                    row,
                    f"{row['shape']} {row['mode']} {row['dtype']} fwd+bwd, {row['threads']} threads",
                    key,
                    target,
                )
            )
    return checks


def markdown(rows: list[dict]) -> list[str]:
    lines = [
        "| shape (B,N,S,C) | mode | dtype | threads | provider | fwd ms | bwd ms | fwd+bwd ms | fwd+bwd vs eager | "
        "fwd+bwd vs compile | public overhead | fwd+bwd GB/s at floor | fwd+bwd GFLOP/s | peak MiB | max abs diff | "
        "loaded |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        shape = ",".join(map(str, row["B_N_S_C"]))
        overhead, error = row.get("public_overhead_percent"), row["max_abs_diff_vs_eager"]
        lines.append(
            f"| {row['shape']} ({shape}) | {row['mode']} | {row['dtype']} | {row['threads']} | {row['provider']} | "
            f"{common.format_ms(row['forward_ms'])} | {common.format_ms(row['backward_ms'])} | "
            f"{common.format_ms(row['forward_backward_ms'])} | "
            f"{common.format_ratio(row['forward_backward_vs_eager'])} | "
            f"{common.format_ratio(row['forward_backward_vs_compile'])} | {common.format_percent(overhead)} | "
            f"{row['forward_backward_floor_gbps']:.1f} | {row['forward_backward_gflops']:.1f} | "
            f"{row['peak_memory_mb']:.1f} | {'-' if error is None else f'{error:.2e}'} | "
            f"{'yes' if row.get('loaded') else 'no'} |"
        )
    return lines


def grid(
    quick: bool, shapes: list[str] | None = None, modes: list[str] | None = None, dtypes: list[str] | None = None
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(shapes, modes, dtypes): the ones given, else the quick set or the full grid."""
    return (
        tuple(shapes or (QUICK["shapes"] if quick else SHAPES)),
        tuple(modes or (QUICK["modes"] if quick else GRID_MODES)),
        tuple(dtypes or (QUICK["dtypes"] if quick else DTYPES)),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_run_arguments(
        parser, quick_help="only the cases with speed targets (CIGN N=36 and GroupViT, fp32 and bf16, all modes)"
    )
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="shapes (default: all)")
    parser.add_argument("--modes", nargs="+", choices=MODES, help=f"modes (default: {' '.join(GRID_MODES)})")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), help="dtypes (default: all)")
    args = parser.parse_args(argv)
    device = common.pick_device(args.device)
    cases_grid = grid(args.quick, args.shapes, args.modes, args.dtypes)
    rows = common.per_thread_count(
        args.threads, lambda: run(*cases_grid, device, repeats=args.repeats, with_compile=not args.no_compile)
    )
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
