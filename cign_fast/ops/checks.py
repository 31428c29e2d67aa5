"""Argument checks shared by the public ops: each error names the argument and what was expected."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(name: str, value: object, ndim: int) -> torch.Tensor:
    """``value`` must be a floating-point tensor of rank ``ndim``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point dtype (float16, bfloat16, float32, float64), got {value.dtype}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a rank-{ndim} tensor, got shape {tuple(value.shape)}")
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """``value`` must hold no NaN or inf. ``aminmax`` propagates both and is ~20x cheaper than
    ``isfinite(value).all()`` on the CPU; one host sync."""
    if not value.numel():
        return
    low, high = torch.aminmax(value)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        bad = "NaN" if bool(torch.isnan(low) | torch.isnan(high)) else "inf"
        raise ValueError(f"{name}: contains {bad}; expected finite values")


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"expected all inputs on one device, got {listing}")
    return next(iter(devices.values()))


def check_same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    """All tensors of one dtype; returns it."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{name} is {dt}" for name, dt in dtypes.items())
        raise TypeError(f"expected all inputs of one dtype, got {listing}")
    return next(iter(dtypes.values()))


def check_positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]
