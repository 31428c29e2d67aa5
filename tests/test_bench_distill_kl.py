"""The distillation benchmarks (token_distill_kl and bernoulli_distill_kl share one measurement): every
provider is timed and compared with the eager reference, rows name their op, and only the public fused
functions are held to the speed target."""

from __future__ import annotations

import pytest
import torch

from cign_fast.bench import bench_bernoulli_distill_kl as bernoulli
from cign_fast.bench import bench_token_distill_kl as token


@pytest.mark.parametrize(("module", "name"), [(token, "token_distill_kl"), (bernoulli, "bernoulli_distill_kl")])
def test_rows_cover_every_provider_and_agree_with_eager(monkeypatch, module, name):
    monkeypatch.setitem(token.SHAPES, "tiny", (6, 5))
    monkeypatch.setattr(token, "TARGET_SHAPE", "tiny")
    rows = module.run(("tiny",), ("fp32",), torch.device("cpu"), repeats=2, progress=lambda line: None)
    by_provider = {row["provider"]: row for row in rows}
    assert {"eager", "reference", "cpp", "cpp-op", "cpp-direct"} <= set(by_provider)
    assert all(row["op"] == name and row["R_K"] == [6, 5] for row in rows)
    for provider, row in by_provider.items():
        assert row["abs_diff_vs_eager"] < 1e-5, provider  # every provider computes the same loss
        assert row["forward_backward_ms"] > 0
    checked = {check["provider"] for check in module.target_checks(rows)}
    assert "cpp" in checked and not checked & {"eager", "reference", "cpp-op", "cpp-direct"}
    assert all(check["op"] == name for check in module.target_checks(rows))
