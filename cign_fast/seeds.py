"""The one check every public ``seed`` argument goes through."""

from __future__ import annotations

import numbers


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as an int when it is a whole number >= 0 (a bool is not one); else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= 0, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return int(value)
