"""One dispatcher for every fused op: picks a backend and, when none fits, says why each refused.

A backend is a module that implements some of the functions below for some devices and dtypes:

* ``assign_attention_forward(q, k, v, params)``
* ``assign_attention_backward(grad_out, q, k, v, col_lse, col_argmax, row_sum, params)``
* ``token_distill_kl_forward(student, teacher, start, stop, temperature, reduction)``
* ``bernoulli_distill_kl_forward(student, teacher, start, stop, temperature, reduction)``

with the contracts of :mod:`cign_fast.ops.reference`, which is itself the ``reference`` backend;
``params`` is a :class:`cign_fast.contract.AssignParams`. A backend may also save the forward's
softmax for the backward (the custom op then uses these two instead of the first pair):

* ``assign_attention_forward_saving(q, k, v, params)``: the six outputs and ``probs`` [B, N, S]
* ``assign_attention_backward_saved(grad_out, q, k, v, col_lse, col_argmax, row_sum, params, probs)``

Speed: on CPU, ``auto`` gives an op to ``cpp`` only where the speed table (:mod:`cign_fast.ops.cpu_speed`,
measured by ``cign-fast bench ops``) does not show it slower than ``reference`` for the op's family,
mode (``variant``), dtype and the thread count; ``cign-fast info`` prints the choice and the reason.

Self-check: the first time ``backend="auto"`` would give an op family (``assign_attention``,
``token_distill_kl``) on a device and dtype to a fused backend in this process, that backend is
held against the reference on a tiny input (:mod:`cign_fast.ops.self_check`, milliseconds). If it
disagrees, one warning names the backend and the error, and ``auto`` falls back to the
next backend for that device and dtype. A backend asked for by name is used as asked. The check
is skipped inside ``torch.compile`` (the trace does not run kernels) and with ``CIGN_FAST_SELF_CHECK=0``.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import TypedDict

import torch

from cign_fast.contract import MODES, TRITON_INTERPRETED
from cign_fast.ops import cpu_speed
from cign_fast.ops.self_check import OP_FAMILIES, op_family, run_check

BACKEND_NAMES = ("reference", "cpp", "cuda", "triton")
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}


class BackendUnavailable(RuntimeError):
    """No backend, or not the requested one, can run the op; the message lists each refusal."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]


BACKENDS = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "reference",
            "cign_fast.ops.reference",
            ("cpu", "cuda"),
            (torch.float16, torch.bfloat16, torch.float32, torch.float64),
        ),
        BackendSpec("cpp", "cign_fast.ops.native_cpp", ("cpu",), (torch.bfloat16, torch.float32)),
        BackendSpec("cuda", "cign_fast.ops.native_cuda", ("cuda",), (torch.float16, torch.bfloat16, torch.float32)),
        BackendSpec("triton", "cign_fast.kernels", ("cuda",), (torch.float16, torch.bfloat16, torch.float32)),
    )
}


SELF_CHECK_VARIABLE = "CIGN_FAST_SELF_CHECK"
# (backend, op family, device, dtype) -> None when the backend passed its self-check, else why it failed.
_self_check_failures: dict[tuple[str, str, torch.device, torch.dtype], str | None] = {}


@functools.cache
def load_backend(name: str) -> tuple[ModuleType | None, str | None]:
    """The backend's module, or ``None`` and why it cannot be imported (cached: asked on every op call)."""
    try:
        return importlib.import_module(BACKENDS[name].module), None
    except (ImportError, OSError, RuntimeError) as err:
        return None, f"cannot be imported ({type(err).__name__}: {err})"


def refusal(name: str, op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` cannot run ``op`` on ``device``/``dtype``, or ``None`` if it can."""
    spec = BACKENDS[name]
    devices = spec.devices + (("cpu",) if name == "triton" and TRITON_INTERPRETED else ())
    if device.type not in devices:
        return f"runs on {'/'.join(devices)} tensors, got {device.type}"
    if dtype not in spec.dtypes:
        supported = ", ".join(str(d).replace("torch.", "") for d in spec.dtypes)
        return f"supports {supported}, got {str(dtype).replace('torch.', '')}"
    module, why = load_backend(name)
    if module is None:
        return why
    if not hasattr(module, op):
        return f"does not implement {op} yet"
    usable = getattr(module, "unavailable_reason", None)
    return usable(device) if usable is not None else None


@torch.compiler.assume_constant_result
def select_backend(
    requested: str, op: str, device: torch.device, dtype: torch.dtype, variant: str | None = None
) -> str:
    """Resolve ``requested`` ('auto' or a backend name) to a backend that can run ``op``.

    ``variant`` (assign_attention's mode, ``""`` for the other ops) lets ``auto`` consult the CPU speed
    table (``None``: it is not consulted). Under ``torch.compile`` this runs once at trace time and its
    answer is a constant of the graph."""
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {', '.join(BACKEND_NAMES)}, got {requested!r}")
        why = refusal(requested, op, device, dtype)
        if why is not None:
            raise BackendUnavailable(f"backend {requested!r} cannot run {op}: {why}")
        return requested
    reasons = []
    for name in AUTO_ORDER.get(device.type, ("reference",)):
        why = refusal(name, op, device, dtype)
        if why is None and variant is not None:
            why = slower_on_cpu(name, op, device, dtype, variant)
        if why is None and name != "reference":
            why = self_check_failure(name, op, device, dtype)
        if why is None:
            return name
        reasons.append(f"  {name}: {why}")
    raise BackendUnavailable(f"no backend can run {op} on {device.type}/{dtype}:\n" + "\n".join(reasons))


def slower_on_cpu(name: str, op: str, device: torch.device, dtype: torch.dtype, variant: str) -> str | None:
    """Why ``auto`` passes over ``cpp`` for ``op``: the speed table measured it slower than ``reference``
    (CPU only); None otherwise, unmeasured cases included."""
    if name != "cpp" or device.type != "cpu":
        return None
    faster, reason = cpu_speed.cpp_verdict(op_family(op), variant, dtype)
    return f"measured {reason}" if faster is False else None


def auto_report(threads: int | None = None) -> list[dict[str, str]]:
    """For ``cign-fast info``: what ``auto`` picks on CPU per op family, mode and dtype at ``threads``
    (default: torch's), and why."""
    rows = []
    variants = {"assign_attention": MODES, "token_distill_kl": ("",), "bernoulli_distill_kl": ("",)}
    for family, modes in variants.items():
        op = OP_FAMILIES[family][0]
        for mode in modes:
            for dtype in (torch.float32, torch.bfloat16):
                why_not = refusal("cpp", op, torch.device("cpu"), dtype)
                faster, reason = cpu_speed.cpp_verdict(family, mode, dtype, threads)
                if why_not is not None:
                    pick, reason = "reference", f"cpp {why_not}"
                elif faster is False:
                    pick = "reference"
                else:
                    pick = "cpp"
                    reason = reason if faster else f"{reason}: auto keeps its order"
                rows.append(
                    {
                        "op": family,
                        "mode": mode,
                        "dtype": str(dtype).replace("torch.", ""),
                        "pick": pick,
                        "why": reason,
                    }
                )
    return rows


def self_check_failure(name: str, op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why backend ``name`` failed its self-check for ``op``'s family on ``device``/``dtype`` (run once per
    process and cached; the first failure warns), or None when it passed or the check is off."""
    if torch.compiler.is_compiling() or os.environ.get(SELF_CHECK_VARIABLE, "1") == "0":
        return None
    key = (name, op_family(op), torch.device(device), dtype)
    if key not in _self_check_failures:
        result = run_check(backend_module(name), key[1], key[2], dtype)
        _self_check_failures[key] = (
            None if result.passed else f"failed its self-check against the reference: {result.failure}"
        )
        if not result.passed:
            warnings.warn(
                f"cign_fast: backend {name!r} disagrees with the reference for {key[1]} on "
                f"{key[2]}/{str(dtype).replace('torch.', '')} ({result.failure}); backend='auto' "
                "falls back to the next backend",
                RuntimeWarning,
                stacklevel=3,
            )
    return _self_check_failures[key]


def backend_module(name: str) -> ModuleType:
    """The backend's module; BackendUnavailable saying why when it cannot be imported."""
    module, why = load_backend(name)
    if module is None:
        raise BackendUnavailable(f"backend {name!r} {why}")
    return module


def backend_function(name: str, op: str):
    """The backend's implementation of ``op`` (the backend was already selected)."""
    return getattr(backend_module(name), op)


def backend_report(device: torch.device | None = None) -> dict[str, dict[str, str | None]]:
    """For ``cign-fast info``: per backend and op, ``None`` if usable in float32, else why not.

    Each backend is asked on ``device``, or on the device it would serve here (``check_devices``)."""
    ops = (
        "assign_attention_forward",
        "assign_attention_backward",
        "token_distill_kl_forward",
        "bernoulli_distill_kl_forward",
    )
    report = {}
    for name in BACKENDS:
        module, why = load_backend(name)
        dev = device or check_devices(name)[-1]
        if module is not None and dev.type == "cuda" and not torch.cuda.is_available():
            why = "imports, but no CUDA device is visible to torch"
        report[name] = {op: why if why is not None else refusal(name, op, dev, torch.float32) for op in ops}
    return report


def check_devices(name: str) -> list[torch.device]:
    """The devices ``cign-fast info --check`` holds backend ``name`` to the reference on, here."""
    devices = [torch.device(kind) for kind in BACKENDS[name].devices if kind != "cuda" or torch.cuda.is_available()]
    if name == "triton" and TRITON_INTERPRETED and not torch.cuda.is_available():
        devices.append(torch.device("cpu"))
    return devices or [torch.device(BACKENDS[name].devices[-1])]


class CheckRow(TypedDict):
    """One row of ``cign-fast info --check``."""

    backend: str
    op: str  # the op family
    device: str
    dtype: str
    result: str  # "ok", "FAILED: why" or "unavailable: why"
    error: float | None  # the largest relative error, None when the check did not run


def check_report() -> list[CheckRow]:
    """For ``cign-fast info --check``: every backend, op family, device and dtype held against the reference."""
    rows = []
    for name, spec in BACKENDS.items():
        for device in check_devices(name):
            for family, ops in OP_FAMILIES.items():
                for dtype in spec.dtypes:
                    why = refusal(name, ops[0], device, dtype)
                    if device.type == "cuda" and not torch.cuda.is_available():
                        why = why or "no CUDA device is visible to torch"
                    error, result = None, f"unavailable: {why}"
                    if why is None:
                        check = run_check(backend_module(name), family, device, dtype)
                        error, result = check.error, "ok" if check.passed else f"FAILED: {check.failure}"
                    rows.append(
                        CheckRow(
                            backend=name,
                            op=family,
                            device=str(device),
                            dtype=str(dtype).replace("torch.", ""),
                            result=result,
                            error=error,
                        )
                    )
    return rows
