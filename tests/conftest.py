"""Test setup: Triton runs under its CPU interpreter when no CUDA device exists.

``TRITON_INTERPRET`` must be set before any Triton kernel is defined, i.e. before
``cign_fast.kernels`` is imported, which is why it is set here at collection time.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cign_fast.ops.backends import refusal  # noqa: E402  (after TRITON_INTERPRET)

ALL_BACKENDS = ("reference", "cpp", "triton", "cuda")


def backend_device(name: str) -> torch.device:
    """The device a backend's tests run on here: CUDA when present, else CPU (Triton interpreted)."""
    if name == "cpp":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_backend(name: str, op: str, dtype: torch.dtype = torch.float32) -> torch.device:
    """Skip (saying why) when backend ``name`` cannot run ``op`` on this machine; else its device."""
    device = backend_device(name)
    why = refusal(name, op, device, dtype)
    if why is not None:
        pytest.skip(f"backend {name} on {device.type}: {why}")
    return device


@pytest.fixture
def rng_seed(request: pytest.FixtureRequest) -> int:
    """A fixed seed per test (a hash of its id, so every run draws the same numbers), seeded into torch and
    printed, so a failing test's output names the seed that reproduces it."""
    seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    torch.manual_seed(seed)
    print(f"{request.node.nodeid}: torch.manual_seed({seed})")
    return seed


@pytest.fixture
def value_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the ops' value checks (NaN/inf, index ranges) on for one test: they are off by default."""
    monkeypatch.setenv("CIGN_FAST_CHECKS", "1")
