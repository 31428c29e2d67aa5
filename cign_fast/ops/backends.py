"""One dispatcher for every fused op: picks a backend and, when none fits, says why each refused.

A backend is a module that implements some of the functions below for some devices and dtypes:

* ``assign_attention_forward(q, k, v, mode, tau, eps, sum_assign, seed, return_maps)``
* ``assign_attention_backward(grad_out, q, k, v, col_lse, col_argmax, row_sum, mode, tau, eps, sum_assign, seed)``
* ``token_distill_kl_forward(student, teacher, start, stop, temperature, reduction)``
* ``bernoulli_distill_kl_forward(student, teacher, start, stop, temperature, reduction)``

with the contracts of :mod:`cign_fast.ops.reference`, which is itself the ``reference`` backend.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

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
        BackendSpec("reference", "cign_fast.ops.reference", ("cpu", "cuda"),
                    (torch.float16, torch.bfloat16, torch.float32, torch.float64)),
        BackendSpec("cpp", "cign_fast.ops.native_cpp", ("cpu",), (torch.bfloat16, torch.float32)),
        BackendSpec("cuda", "cign_fast.ops.native_cuda", ("cuda",), (torch.float16, torch.bfloat16, torch.float32)),
        BackendSpec("triton", "cign_fast.kernels", ("cuda",), (torch.float16, torch.bfloat16, torch.float32)),
    )
}


def triton_interpreted() -> bool:
    """``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors (slowly): tests use it in CI."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    devices = spec.devices + (("cpu",) if name == "triton" and triton_interpreted() else ())
    if device.type not in devices:
        return f"runs on {'/'.join(devices)} tensors, got {device.type}"
    if dtype not in spec.dtypes:
        return f"supports {', '.join(str(d).replace('torch.', '') for d in spec.dtypes)}, got {str(dtype).replace('torch.', '')}"
    module, why = load_backend(name)
    if module is None:
        return why
    if not hasattr(module, op):
        return f"does not implement {op} yet"
    usable = getattr(module, "unavailable_reason", None)
    return usable(device) if usable is not None else None


@torch.compiler.assume_constant_result
def select_backend(requested: str, op: str, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve ``requested`` ('auto' or a backend name) to a backend that can run ``op``.

    Under ``torch.compile`` this runs once at trace time and its answer is a constant of the graph."""
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
        if why is None:
            return name
        reasons.append(f"  {name}: {why}")
    raise BackendUnavailable(f"no backend can run {op} on {device.type}/{dtype}:\n" + "\n".join(reasons))


def backend_function(name: str, op: str):
    """The backend's implementation of ``op`` (the backend was already selected)."""
    module, why = load_backend(name)
    if module is None:
        raise BackendUnavailable(f"backend {name!r} {why}")
    return getattr(module, op)


def backend_report(device: torch.device | None = None) -> dict[str, dict[str, str | None]]:
    """For ``cign-fast info``: per backend and op, ``None`` if usable in float32, else why not.

    Each backend is asked on ``device``, or on its own kind of device when none is given."""
    ops = ("assign_attention_forward", "assign_attention_backward", "token_distill_kl_forward",
           "bernoulli_distill_kl_forward")
    report = {}
    for name, spec in BACKENDS.items():
        module, why = load_backend(name)
        dev = device or torch.device(spec.devices[-1])
        if module is not None and dev.type == "cuda" and not torch.cuda.is_available():
            why = "imports, but no CUDA device is visible to torch"
        report[name] = {op: why if why is not None else refusal(name, op, dev, torch.float32) for op in ops}
    return report
