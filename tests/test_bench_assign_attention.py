"""The assign_attention benchmark's ``products`` provider: the op's six matrix products alone, timed beside the
providers, compared with nothing and kept out of the speed targets (it is a floor, not an implementation)."""

from __future__ import annotations

import torch

from cign_fast.bench import bench_assign_attention as bench


def test_matrix_products_are_the_ops_products_without_the_map():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 4, generator=generator, dtype=torch.float64, requires_grad=True) for n in (3, 5, 5))
    grad_out = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    out = bench.matrix_products(q, k, v)
    scale = 4**-0.5
    logits = scale * torch.einsum("bnc,bsc->bns", q, k)
    torch.testing.assert_close(out, torch.einsum("bns,bsc->bnc", logits, v))
    grad_q, grad_k, grad_v = torch.autograd.grad(out, (q, k, v), grad_out)
    grad_logits = torch.einsum("bnc,bsc->bns", grad_out, v)  # dout v^T
    torch.testing.assert_close(grad_v, torch.einsum("bns,bnc->bsc", logits, grad_out))
    torch.testing.assert_close(grad_q, scale * torch.einsum("bns,bsc->bnc", grad_logits, k))
    torch.testing.assert_close(grad_k, scale * torch.einsum("bns,bnc->bsc", grad_logits, q))


def test_the_products_row_is_timed_compared_with_nothing_and_has_no_target(monkeypatch):
    monkeypatch.setitem(bench.SHAPES, "tiny", (2, 3, 5, 4))
    monkeypatch.setattr(bench, "TARGET_SHAPES", ("tiny",))
    rows = bench.run_case(bench.Case("tiny", "soft", "fp32"), torch.device("cpu"), repeats=2, with_compile=False)
    by_provider = {row["provider"]: row for row in rows}
    assert {"eager", "products", "reference"} <= set(by_provider)
    products = by_provider["products"]
    assert products["max_abs_diff_vs_eager"] is None  # another function: no accuracy to report
    assert by_provider["reference"]["max_abs_diff_vs_eager"] < 1e-5
    assert products["forward_backward_ms"] > 0 and products["forward_backward_vs_eager"] > 0
    targeted = {check["provider"] for check in bench.target_checks(rows)}
    assert "products" not in targeted and "eager" not in targeted
    assert targeted  # the fused backends at the target shape are still checked
