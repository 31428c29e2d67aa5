"""Training-step benchmark: one full CIGN step in features mode, reference ops against the fused ones.

A step is what the trainer does per batch at a task t > 0: student forward (Gumbel assignment),
frozen-teacher forward, ``cign_loss`` with class-token distillation, backward, clipping-free Adam
step. The model's ``backend`` (used by ``assign_attention`` and ``token_distill_kl``) is
``"reference"`` (plain torch) or ``"auto"`` (the fused backend the dispatcher picks here).
Default size: B=128, N=100 classes (75 old, distilled), S_v=49, S_a=64, D=512, depth 3, 8 heads,
512-wide input features. ``--quick`` shrinks it for a CPU (B=16, D=256, depth 1, 4 heads).

    python -m cign_fast.bench.bench_step [--quick] [--threads 2]      (or: cign-fast bench step [...])

Writes ``<gpu-name-or-cpu>-step.json`` and ``.md`` (device, versions, date and sizes) into ``--out``
(default ``bench-results`` in the working directory).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cign_fast.bench import common
from cign_fast.methods.base import as_float32
from cign_fast.model import CIGN, ModelConfig, cign_loss
from cign_fast.ops.backends import select_backend
from cign_fast.train.evaluate import autocast_context

BACKENDS = ("reference", "auto")
QUICK = {"batch": 16, "dim": 256, "depth": 1, "heads": 4}
MEMORY_NOTE = (
    "CUDA: torch.cuda.max_memory_allocated during one step minus what was allocated before it (model, "
    "teacher, Adam state and batch already live). CPU: peak of ATen's allocations during one step, replayed "
    "from the torch profiler's memory events (approximate; memory outside ATen's allocator is not seen)."
)
FUSED_OPS = ("assign_attention_forward", "assign_attention_backward", "token_distill_kl_forward")
TIMER_NOTE = (
    "CUDA: triton.testing.do_bench median. CPU: time.perf_counter around each step after the warm-up "
    "steps, the backends timed in turns, median of the repeats. One step = student + teacher forward, "
    "loss, backward, Adam step."
)


@dataclass(frozen=True)
class StepSize:
    batch: int = 128
    classes: int = 100
    old_classes: int = 75
    visual_tokens: int = 49
    audio_tokens: int = 64
    feature_dim: int = 512
    dim: int = 512
    depth: int = 3
    heads: int = 8


def build_step(size: StepSize, backend: str, device: torch.device, precision: str):
    """A closure running one training step, with the model, teacher, optimiser and batch it closes over."""
    torch.manual_seed(0)
    config = ModelConfig(
        input_mode="features",
        dim=size.dim,
        depth=size.depth,
        num_heads=size.heads,
        audio_feature_dim=size.feature_dim,
        visual_feature_dim=size.feature_dim,
        backend=backend,
    )
    model = CIGN(config).to(device)
    model.add_task(size.old_classes)
    teacher = model.frozen_copy()
    model.add_task(size.classes - size.old_classes)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    audio = torch.randn(size.batch, size.audio_tokens, size.feature_dim, device=device)
    visual = torch.randn(size.batch, size.visual_tokens, size.feature_dim, device=device)
    labels = torch.randint(size.old_classes, size.classes, (size.batch,), device=device)

    def step() -> None:
        with autocast_context(device, precision):
            out = model(audio, visual)
            with torch.no_grad():
                teacher_out = as_float32(teacher(audio, visual))
        losses = cign_loss(as_float32(out), labels, teacher_out, size.old_classes, backend=backend)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()

    return step


def resolved_backends(backend: str, device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """Which backend each fused op runs on for ``backend`` ("auto" resolves per op)."""
    return {op: select_backend(backend, op, device, dtype) for op in FUSED_OPS}


def run(
    size: StepSize, backends: tuple[str, ...], device: torch.device, precision: str, warmup: int, repeats: int
) -> list[dict]:
    """One row per backend; the steps are timed in turns so a change of load hits every backend alike."""
    dtype = torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else torch.float32
    steps = {backend: build_step(size, backend, device, precision) for backend in backends}
    milliseconds = common.medians_ms(steps, device, warmup=warmup, repeats=repeats)
    rows = [
        {
            "backend": backend,
            "threads": torch.get_num_threads(),
            "ops_run_on": resolved_backends(backend, device, dtype),
            "ms_per_step": milliseconds[backend],
            "samples_per_s": size.batch / (milliseconds[backend] / 1e3),
            "peak_memory_mb": common.peak_memory_mb(step, device),
        }
        for backend, step in steps.items()
    ]
    reference_ms = milliseconds.get("reference")
    for row, backend in zip(rows, steps, strict=True):
        row["speedup_vs_reference"] = reference_ms / milliseconds[backend] if reference_ms else None
    return rows


def markdown(report: dict) -> str:
    size = report["size"]
    loaded = sorted({f"{row['threads']} threads: {row['loaded']}" for row in report["rows"] if row.get("loaded")})
    lines = [
        "# Training step (features mode)",
        "",
        *common.loaded_banner(loaded),
        *common.environment_markdown(report["environment"]),
        f"- precision: {report['precision']}; warm-up {report['warmup']}, repeats {report['repeats']}",
        f"- size: B={size['batch']}, N={size['classes']} ({size['old_classes']} old, distilled), "
        f"S_v={size['visual_tokens']}, S_a={size['audio_tokens']}, D={size['dim']}, depth {size['depth']}, "
        f"{size['heads']} heads, input features {size['feature_dim']}" + (" (--quick)" if report["quick"] else ""),
        f"- timer: {report['timer']}",
        f"- peak memory: {report['peak_memory']}",
        f"- load: {common.LOAD_NOTE}",
        "",
        "| backend | threads | ops run on | ms / step | samples / s | peak memory (MiB) | speedup vs reference | "
        "loaded |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        ops = ", ".join(
            f"{op.replace('_forward', ' fwd').replace('_backward', ' bwd')}: {name}"
            for op, name in row["ops_run_on"].items()
        )
        lines.append(
            f"| {row['backend']} | {row['threads']} | {ops} | {row['ms_per_step']:.1f} | "
            f"{row['samples_per_s']:.1f} | {row['peak_memory_mb']:.1f} | "
            f"{common.format_ratio(row['speedup_vs_reference'])} | {'yes' if row.get('loaded') else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = StepSize()
    parser = argparse.ArgumentParser(prog="cign-fast bench step", description=__doc__.splitlines()[0])
    common.add_run_arguments(parser, quick_help=f"a CPU-sized step: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    for name in asdict(defaults):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=None, help=f"default {getattr(defaults, name)}"
        )
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument(
        "--out", type=Path, default=common.RESULTS, help=f"results folder (default: ./{common.RESULTS})"
    )
    args = parser.parse_args(argv)
    if args.repeats == parser.get_default("repeats"):
        args.repeats = 5  # a full step is long: fewer repeats than the op benchmarks
    return args


def step_size(args: argparse.Namespace) -> StepSize:
    values = {**asdict(StepSize()), **(QUICK if args.quick else {})}
    values.update({name: getattr(args, name) for name in values if getattr(args, name) is not None})
    size = StepSize(**values)
    if not 0 < size.old_classes < size.classes:
        raise ValueError(
            f"--old-classes: expected between 1 and --classes - 1 ({size.classes - 1}), got {size.old_classes}"
        )
    if min(values.values()) < 1:
        raise ValueError(f"sizes: expected positive integers, got {values}")
    return size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        size = step_size(args)
        device = common.pick_device(args.device)
        environment = common.environment(device)
        rows = common.per_thread_count(
            args.threads,
            lambda: common.measured_case(
                lambda: run(size, tuple(args.backends), device, args.precision, args.warmup, args.repeats)
            ),
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {
        "environment": {**environment, "load_average_end": common.load_average()},
        "size": asdict(size),
        "quick": args.quick,
        "precision": args.precision,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "timer": TIMER_NOTE,
        "peak_memory": MEMORY_NOTE,
        "rows": rows,
    }
    text = markdown(report)
    json_path, md_path = common.write_results(f"{common.device_label(device)}-step", report, text, args.out)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
