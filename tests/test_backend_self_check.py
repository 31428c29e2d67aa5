"""Self-checking backends: backend='auto' holds a fused backend against the reference once per op family,
device and dtype, warns once and falls back when it disagrees; ``cign-fast info --check`` runs the same check."""

from __future__ import annotations

import argparse
import sys
import types
import warnings

import pytest
import torch

import cign_fast
from cign_fast.cli import info
from cign_fast.ops import backends, reference
from cign_fast.ops.self_check import run_check


def broken_backend(scale_out: float = 1.0, flip_choices: bool = False) -> types.ModuleType:
    """A backend module: the reference, with its output scaled or its hard choices moved to another group."""
    module = types.ModuleType("broken_backend")

    def assign_attention_forward(q, k, v, params):
        out, col_lse, col_argmax, row_sum, hard, soft = reference.assign_attention_forward(q, k, v, params)
        if flip_choices:
            hard = hard.roll(1, dims=1)
        return out * scale_out, col_lse, col_argmax, row_sum, hard, soft

    module.assign_attention_forward = assign_attention_forward
    module.assign_attention_backward = reference.assign_attention_backward
    module.token_distill_kl_forward = reference.token_distill_kl_forward
    module.bernoulli_distill_kl_forward = reference.bernoulli_distill_kl_forward
    return module


@pytest.fixture
def with_backend(monkeypatch):
    """Install a module as backend 'broken', first in the CPU auto order, with a fresh self-check cache."""

    def install(module: types.ModuleType) -> None:
        monkeypatch.setitem(sys.modules, "broken_backend", module)
        monkeypatch.setitem(
            backends.BACKENDS, "broken", backends.BackendSpec("broken", "broken_backend", ("cpu",), (torch.float32,))
        )
        monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("broken", "cpp", "reference"))

    monkeypatch.setattr(backends, "_self_check_failures", {})
    monkeypatch.delenv(backends.SELF_CHECK_VARIABLE, raising=False)
    yield install
    backends.load_backend.cache_clear()


def test_a_disagreeing_backend_warns_once_and_auto_falls_back(with_backend):
    with_backend(broken_backend(scale_out=1.01))
    op, cpu = "assign_attention_forward", torch.device("cpu")
    with pytest.warns(
        RuntimeWarning,
        match=r"backend 'broken' disagrees with the reference for assign_attention on "
        r"cpu/float32 \(out \(soft\) off by \d\.\d+e-03 \(allowed 1e-04\)\)",
    ):
        assert backends.select_backend("auto", op, cpu, torch.float32) == "cpp"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select_backend("auto", op, cpu, torch.float32) == "cpp"
        q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
        torch.testing.assert_close(
            cign_fast.assign_attention(q, k, v), cign_fast.assign_attention_reference(q, k, v)[0]
        )
    assert backends.select_backend("broken", op, cpu, torch.float32) == "broken"  # asked for by name: used as asked
    assert backends.select_backend("auto", "token_distill_kl_forward", cpu, torch.float32) == "broken"


def test_other_hard_choices_fail_the_check(with_backend):
    with_backend(broken_backend(flip_choices=True))
    result = run_check(sys.modules["broken_backend"], "assign_attention", torch.device("cpu"), torch.float32)
    assert result.failure == "hard choices differ from the reference in soft mode"


def test_the_check_can_be_switched_off(with_backend, monkeypatch):
    with_backend(broken_backend(scale_out=2.0))
    monkeypatch.setenv(backends.SELF_CHECK_VARIABLE, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            backends.select_backend("auto", "assign_attention_forward", torch.device("cpu"), torch.float32) == "broken"
        )


def test_the_check_leaves_the_callers_state_alone(with_backend):
    """Inputs from a private generator; gradients on and autocast off inside, whatever the caller's context."""
    with_backend(broken_backend())  # agrees with the reference
    state = torch.get_rng_state()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert (
            backends.select_backend("auto", "assign_attention_forward", torch.device("cpu"), torch.float32) == "broken"
        )
    assert torch.equal(torch.get_rng_state(), state)
    assert backends._self_check_failures == {("broken", "assign_attention", torch.device("cpu"), torch.float32): None}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["assign_attention", "token_distill_kl"])
def test_cpp_backend_passes_its_check(family, dtype):
    result = run_check(backends.load_backend("cpp")[0], family, torch.device("cpu"), dtype)
    assert result.passed, result.failure
    assert 0 < result.error <= (1e-4 if dtype == torch.float32 else 3e-2)


def test_info_check_prints_a_table_and_fails_on_a_failed_check(with_backend, monkeypatch, capsys):
    with_backend(broken_backend(scale_out=1.5))
    monkeypatch.setattr(backends, "BACKENDS", {name: backends.BACKENDS[name] for name in ("cpp", "broken")})
    monkeypatch.setattr(info, "cuda_extension_archs", lambda: "none", raising=False)  # not what this test reads
    parser = argparse.ArgumentParser()
    info.add_arguments(parser)
    assert info.main(parser.parse_args(["--check"])) == 1
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[lines.index(next(line for line in lines if "self-check" in line)) + 2 :]]
    families = ("assign_attention", "token_distill_kl", "bernoulli_distill_kl")
    assert [row[:4] for row in rows] == (
        [["cpp", family, "cpu", dtype] for family in families for dtype in ("bfloat16", "float32")]
        + [["broken", family, "cpu", "float32"] for family in families]
    )
    assert [row[5] for row in rows] == ["ok"] * 6 + ["FAILED:", "ok", "ok"]
