"""Test setup and fixtures: Triton runs under its CPU interpreter when no CUDA device exists.

``TRITON_INTERPRET`` must be set before any Triton kernel is defined, i.e. before
``cign_fast.kernels`` is imported, which is why it is set here at collection time. Helpers the
tests share are in ``helpers.py``.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
