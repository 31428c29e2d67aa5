"""A backend held against the reference on a tiny input: what the dispatcher runs the first time a fused
backend serves an op on a device and dtype, and what ``cign-fast info --check`` runs for every backend.

The inputs come from a private generator (the caller's random state is untouched), the reference is
the autograd composition of :mod:`cign_fast.ops.reference` in float64 on the same (rounded) inputs,
and the check runs with gradients on and autocast off whatever the caller's context. For the
assignment op it runs the forward (maps included) and the backward in soft and in gumbel mode; the
hard choices must be equal and every output within the dtype's tolerance.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import ModuleType

import torch

from cign_fast.contract import MODE_GUMBEL, MODE_SOFT, MODES, AssignParams
from cign_fast.ops.reference import (
    assign_attention_reference,
    bernoulli_distill_kl_reference,
    token_distill_kl_reference,
)

OP_FAMILIES = {
    "assign_attention": ("assign_attention_forward", "assign_attention_backward"),
    "token_distill_kl": ("token_distill_kl_forward",),
    "bernoulli_distill_kl": ("bernoulli_distill_kl_forward",),
}
# Largest error allowed, relative to the largest magnitude of the reference output (at least 1).
TOLERANCES = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
ASSIGN_SHAPE = (2, 5, 7, 8)  # B, N, S, C: odd sizes, a few milliseconds on any backend
DISTILL_SHAPE = (6, 11)  # R, K; columns [2, 9) distilled
INPUT_SEED = 20240601


@dataclass(frozen=True)
class CheckResult:
    """``error``: the largest relative error over the outputs; ``failure``: why the check failed, or None."""

    error: float
    failure: str | None

    @property
    def passed(self) -> bool:
        return self.failure is None


def op_family(op: str) -> str:
    """The family of a backend function: ``assign_attention``, ``token_distill_kl`` or ``bernoulli_distill_kl``."""
    for family, ops in OP_FAMILIES.items():
        if op in ops:
            return family
    raise ValueError(f"op: expected one of {', '.join(o for ops in OP_FAMILIES.values() for o in ops)}, got {op!r}")


def inputs(shapes: tuple[tuple[int, ...], ...], device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """Standard-normal tensors of ``shapes`` from a private generator, in ``dtype`` on ``device``."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype) for shape in shapes
    ]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max(1, max |want|)`` in float64 on the CPU (NaN counts as infinite)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    difference = (got - want).abs().max().item() if want.numel() else 0.0
    return float("inf") if difference != difference else difference / max(1.0, want.abs().max().item())


def compare(outputs: dict[str, tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> CheckResult:
    """The largest relative error over ``outputs`` (name -> (got, want)) and the first one past the tolerance."""
    errors = {name: relative_error(got, want) for name, (got, want) in outputs.items()}
    worst = max(errors, key=lambda name: errors[name])
    allowed = TOLERANCES[dtype]
    failure = None if errors[worst] <= allowed else f"{worst} off by {errors[worst]:.2e} (allowed {allowed:.0e})"
    return CheckResult(errors[worst], failure)


def check_assign_attention(module: ModuleType, device: torch.device, dtype: torch.dtype) -> CheckResult:
    """``module``'s assignment forward and backward against the reference in soft and gumbel mode."""
    batch, groups, tokens, channels = ASSIGN_SHAPE
    q, k, v, grad_out = inputs(
        ((batch, groups, channels), (batch, tokens, channels), (batch, tokens, channels), (batch, groups, channels)),
        device,
        dtype,
    )
    results = []
    for mode in (MODE_SOFT, MODE_GUMBEL):
        params = AssignParams(mode=mode, tau=0.8, eps=1.0, seed=INPUT_SEED, return_maps=True)
        if hasattr(module, "assign_attention_forward_saving"):  # the path the custom op takes (saved softmax)
            out, col_lse, col_argmax, row_sum, hard, soft, probs = module.assign_attention_forward_saving(
                q, k, v, params
            )
            grads = module.assign_attention_backward_saved(
                grad_out, q, k, v, col_lse, col_argmax, row_sum, params, probs
            )
        else:
            out, col_lse, col_argmax, row_sum, hard, soft = module.assign_attention_forward(q, k, v, params)
            grads = module.assign_attention_backward(grad_out, q, k, v, col_lse, col_argmax, row_sum, params)
        leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
        want_out, want_hard, want_soft = assign_attention_reference(
            *leaves, mode=MODES[mode], tau=params.tau, eps=params.eps, seed=params.seed
        )
        want_grads = torch.autograd.grad(want_out, leaves, grad_out.cpu().double())
        if not torch.equal(hard.cpu().double(), want_hard):
            return CheckResult(float("inf"), f"hard choices differ from the reference in {MODES[mode]} mode")
        named = {"out": (out, want_out), "soft_map": (soft, want_soft)}
        named.update({f"grad_{name}": (got, want) for name, got, want in zip("qkv", grads, want_grads, strict=True)})
        result = compare({f"{key} ({MODES[mode]})": pair for key, pair in named.items()}, dtype)
        if not result.passed:
            return result
        results.append(result)
    return max(results, key=lambda result: result.error)


def check_distillation(family: str, module: ModuleType, device: torch.device, dtype: torch.dtype) -> CheckResult:
    """``module``'s distillation loss and student gradient (``family``: either KL op) against the reference."""
    student, teacher = inputs((DISTILL_SHAPE, DISTILL_SHAPE), device, dtype)
    loss, grad = getattr(module, f"{family}_forward")(student, teacher, 2, 9, 2.0, "batchmean")
    leaf = student.detach().cpu().double().requires_grad_()
    reference = {
        "token_distill_kl": token_distill_kl_reference,
        "bernoulli_distill_kl": bernoulli_distill_kl_reference,
    }[family]
    want = reference(leaf, teacher.cpu().double(), temperature=2.0, columns=slice(2, 9))
    (want_grad,) = torch.autograd.grad(want, leaf)
    return compare({"loss": (loss, want), "grad_student": (grad, want_grad)}, dtype)


CHECKS = {
    "assign_attention": check_assign_attention,
    "token_distill_kl": lambda *args: check_distillation("token_distill_kl", *args),
    "bernoulli_distill_kl": lambda *args: check_distillation("bernoulli_distill_kl", *args),
}


def run_check(module: ModuleType, family: str, device: torch.device, dtype: torch.dtype) -> CheckResult:
    """Hold backend ``module`` to the reference for op ``family`` on ``device``/``dtype``; an exception the
    backend raises is a failed check, not an error of the caller."""
    autocast = (
        torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else contextlib.nullcontext()
    )
    with torch.inference_mode(False), torch.enable_grad(), autocast:
        try:
            return CHECKS[family](module, device, dtype)
        except Exception as err:  # noqa: BLE001  (any failure of the backend fails its check)
            return CheckResult(float("inf"), f"raised {type(err).__name__}: {err}")
