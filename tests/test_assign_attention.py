"""assign_attention: every backend against the reference, the reference against a direct float64
computation, the straight-through and Gumbel properties, the custom op and the input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cign_fast
from cign_fast.ops.assign_attention import OPTION_FIELDS, assign_attention_bwd, assign_attention_fwd
from cign_fast.ops.reference import MODES, assign_attention_reference

from helpers import ALL_BACKENDS, require_backend

OP = "assign_attention_forward"
# (B, N, S, C): odd sizes, N = 1, S = 1, sizes just above a power of two. Small: Triton may be interpreted.
SHAPES = [(2, 5, 7, 8), (1, 1, 6, 4), (2, 3, 1, 6), (2, 17, 9, 12), (1, 9, 33, 20)]


def random_inputs(shape, dtype=torch.float32, device="cpu", layout="contiguous"):
    """q [B,N,C], k, v [B,S,C] with requires_grad; ``layout='strided'`` gives non-contiguous views."""
    batch, groups, tokens, channels = shape
    if layout == "contiguous":
        q, k, v = (torch.randn(batch, n, channels, device=device) for n in (groups, tokens, tokens))
    else:  # channels-first storage transposed back, and every other row of a twice-as-long tensor
        q = torch.randn(batch, channels, groups, device=device).transpose(1, 2)
        k = torch.randn(batch, tokens * 2, channels, device=device)[:, ::2]
        v = torch.randn(channels, batch, tokens, device=device).permute(1, 2, 0)
        assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    return [(2.0 * t).to(dtype).requires_grad_() for t in (q, k, v)]


def assert_close_to_scale(got, want, rtol=1e-4, atol=1e-5, msg=None):
    """``assert_close`` with ``atol`` relative to the largest magnitude of ``want`` (at least 1): float32 sums
    of products err in proportion to the operands' scale, not to each element (cancellation)."""
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * scale, msg=msg)


def reference_with_grads(q, k, v, grad_out, **kwargs):
    """Reference output and gradients computed in float64 from the same (rounded) inputs."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, hard, soft = assign_attention_reference(*leaves, **kwargs)
    grads = torch.autograd.grad(out, leaves, grad_out.double())
    return out, hard, soft, grads


def direct_float64(q, k, v, mode, tau, eps, sum_assign, noise):
    """The spec's formulas with numpy loops over the batch, independent of the package code."""
    q, k, v = (t.detach().double().numpy() for t in (q, k, v))
    outs = []
    for b in range(q.shape[0]):
        logits = (q[b] @ k[b].T) / np.sqrt(q.shape[2])
        if mode == "gumbel":
            logits = logits + noise[b]
        z = logits / tau
        y = np.exp(z - z.max(axis=0, keepdims=True))
        y /= y.sum(axis=0, keepdims=True)
        assign = y if mode == "soft" else (y == y.max(axis=0, keepdims=True)).astype(np.float64)
        if not sum_assign:
            assign = assign / (assign.sum(axis=1, keepdims=True) + eps)
        outs.append(assign @ v[b])
    return torch.from_numpy(np.stack(outs))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sum_assign", [False, True])
def test_reference_matches_direct_float64(rng_seed, mode, sum_assign):
    q, k, v = (t.double() for t in random_inputs((3, 7, 11, 16)))
    noise = cign_fast.ops.gumbel.gumbel_noise((3, 7, 11), 5).double().numpy()
    out, _, _ = assign_attention_reference(q, k, v, mode=mode, tau=0.7, eps=0.5, sum_assign=sum_assign, seed=5)
    expected = direct_float64(q, k, v, mode, 0.7, 0.5, sum_assign, noise)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_backend_matches_reference_fp32(rng_seed, backend, mode, shape):
    device = require_backend(backend, OP)
    kwargs = dict(mode=mode, tau=0.8, eps=1.0, sum_assign=False, seed=rng_seed)
    q, k, v = random_inputs(shape, device=device)
    out, hard, soft = cign_fast.assign_attention(q, k, v, return_maps=True, backend=backend, **kwargs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_out, ref_hard, ref_soft, ref_grads = reference_with_grads(q, k, v, grad_out, **kwargs)
    assert_close_to_scale(out, ref_out)
    assert torch.equal(hard.double(), ref_hard), "hard choices differ from the reference"
    torch.testing.assert_close(soft.double(), ref_soft, rtol=1e-4, atol=1e-6)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert_close_to_scale(got, want, msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sum_assign", [False, True])
def test_backend_strided_inputs_and_options(rng_seed, backend, mode, sum_assign):
    device = require_backend(backend, OP)
    kwargs = dict(mode=mode, tau=1.3, eps=0.25, sum_assign=sum_assign, seed=rng_seed + 1)
    q, k, v = random_inputs((2, 6, 10, 12), device=device, layout="strided")
    out = cign_fast.assign_attention(q, k, v, backend=backend, **kwargs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    ref_out, _, _, ref_grads = reference_with_grads(q, k, v, grad_out, **kwargs)
    assert_close_to_scale(out, ref_out)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_close_to_scale(got, want)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["soft", "gumbel"])
def test_backend_low_precision_within_pytorch_error(rng_seed, backend, dtype, mode):
    device = require_backend(backend, OP, dtype)
    kwargs = dict(mode=mode, tau=1.0, eps=1.0, sum_assign=False, seed=rng_seed)
    q, k, v = random_inputs((2, 9, 13, 16), dtype=dtype, device=device)
    out = cign_fast.assign_attention(q, k, v, backend=backend, **kwargs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    truth_out, _, _, truth_grads = reference_with_grads(q, k, v, grad_out, **kwargs)
    # PyTorch's own error: the same maths with every tensor op rounded to ``dtype``.
    torch_out, torch_grads = eager_in_dtype(q, k, v, grad_out, dtype, **kwargs)
    for got, ours, truth in zip((out, *grads), (torch_out, *torch_grads), (truth_out, *truth_grads), strict=True):
        allowed = 2 * (ours.double() - truth).abs().max().item() + 1e-3 * truth.abs().max().item() + 1e-6
        assert (got.double() - truth).abs().max().item() <= allowed


def eager_in_dtype(q, k, v, grad_out, dtype, *, mode, tau, eps, sum_assign, seed):
    """The spec's forward as eager PyTorch ops in ``dtype`` (logits, softmax, normalise, product)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    qq, kk, vv = leaves
    logits = torch.matmul(qq, kk.transpose(-1, -2)) * qq.shape[-1] ** -0.5
    if mode == "gumbel":
        logits = logits + cign_fast.ops.gumbel.gumbel_noise(tuple(logits.shape), seed, logits.device).to(dtype)
    y = torch.softmax(logits / tau, dim=-2)
    if mode == "soft":
        assign = y
    else:
        hard = torch.zeros_like(y).scatter_(-2, y.argmax(dim=-2, keepdim=True), 1.0)
        assign = hard - y.detach() + y
    if not sum_assign:
        assign = assign / (assign.sum(dim=-1, keepdim=True) + eps)
    out = torch.matmul(assign, vv)
    return out, torch.autograd.grad(out, leaves, grad_out.to(dtype))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gumbel_choices_follow_the_seed(backend):
    device = require_backend(backend, OP)
    q, k, v = (t.detach() for t in random_inputs((2, 12, 40, 8), device=device))
    maps = {
        s: cign_fast.assign_attention(q, k, v, mode="gumbel", seed=s, return_maps=True, backend=backend)[1]
        for s in (1, 1, 2)
    }
    again = cign_fast.assign_attention(q, k, v, mode="gumbel", seed=1, return_maps=True, backend=backend)[1]
    assert torch.equal(maps[1], again)
    assert not torch.equal(maps[1], maps[2])
    _, ref_hard, _ = assign_attention_reference(q.cpu(), k.cpu(), v.cpu(), mode="gumbel", seed=1)
    assert torch.equal(maps[1].cpu(), ref_hard)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_global_batch_noise_makes_ranks_draw_the_one_process_noise(rng_seed, backend):
    """Two data-parallel ranks holding the interleaved halves of a batch (DistributedSampler's layout: rank r has
    clips r, r + 2, ...) and passing (offset, stride) = (r, 2) choose and compute exactly what one process does
    on the whole batch; without the offsets the ranks would draw the same noise for different clips."""
    device = require_backend(backend, OP)
    q, k, v = random_inputs((4, 6, 9, 8), device=device)
    grad_out = torch.randn_like(q)
    whole, whole_hard, _ = cign_fast.assign_attention(
        q, k, v, mode="gumbel", seed=rng_seed, return_maps=True, backend=backend
    )
    whole_grads = torch.autograd.grad(whole, (q, k, v), grad_out)
    for rank in (0, 1):
        local = [t[rank::2] for t in (q, k, v)]
        out, hard, _ = cign_fast.assign_attention(
            *local,
            mode="gumbel",
            seed=rng_seed,
            return_maps=True,
            noise_batch_offset=rank,
            noise_batch_stride=2,
            backend=backend,
        )
        assert torch.equal(hard, whole_hard[rank::2]), f"rank {rank} chose other groups than one process"
        torch.testing.assert_close(out, whole[rank::2], rtol=1e-5, atol=1e-6)
        grads = torch.autograd.grad(out, local, grad_out[rank::2])
        for got, want in zip(grads, whole_grads, strict=True):
            torch.testing.assert_close(got, want[rank::2], rtol=1e-5, atol=1e-6)
    same_clips = [t[:2] for t in (q, k, v)]
    maps = [
        cign_fast.assign_attention(
            *same_clips,
            mode="gumbel",
            seed=rng_seed,
            return_maps=True,
            noise_batch_offset=rank,
            noise_batch_stride=2,
            backend=backend,
        )[1]
        for rank in (0, 1)
    ]
    assert not torch.equal(maps[0], maps[1]), "both ranks drew the same noise"


def test_noise_index_places_the_local_batch_in_the_global_one():
    full = cign_fast.ops.gumbel.gumbel_noise((8, 3, 5), 11)
    assert torch.equal(cign_fast.ops.gumbel.gumbel_noise((3, 3, 5), 11, batch_offset=1, batch_stride=3), full[1::3])
    assert torch.equal(cign_fast.ops.gumbel.gumbel_noise((2, 3, 5), 11, batch_offset=4), full[4:6])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_soft_map_is_the_softmax_without_noise(rng_seed, backend, mode):
    """return_maps: the soft map is softmax_N(scale q k^T / tau) in every mode (the authors' soft map, also in
    gumbel mode), the hard map the one-hot the output used (the noisy argmax in gumbel mode)."""
    device = require_backend(backend, OP)
    q, k, v = (t.detach() for t in random_inputs((2, 7, 11, 8), device=device))
    _, hard, soft = cign_fast.assign_attention(
        q, k, v, mode=mode, tau=0.8, seed=rng_seed, return_maps=True, backend=backend
    )
    clean = torch.softmax((q.double() @ k.double().transpose(1, 2)) * 8**-0.5 / 0.8, dim=1)
    torch.testing.assert_close(soft.double(), clean, rtol=1e-5, atol=1e-6)
    used = cign_fast.assign_attention_reference(q.cpu(), k.cpu(), v.cpu(), mode=mode, tau=0.8, seed=rng_seed)[1]
    assert torch.equal(hard.cpu(), used)
    if mode == "gumbel":
        assert not torch.equal(hard.cpu(), torch.zeros_like(used).scatter_(1, clean.cpu().argmax(1, keepdim=True), 1.0))


def near_tie_inputs(tokens: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """q, k, v for two groups 1 ulp apart: q[0] = e_0, q[1] = (1 + 2^-23) e_0 (C = 4, so scale = 1/2 exactly) and
    k[s] = (1 + s / S) e_0, so q k^T has one non-zero term per element, rounded alike by every backend.
    Dividing by tau merges the two logits of some tokens into a tie (the first group wins) and keeps others
    apart, as a correctly rounded division decides: a product with 1 / tau, an fma or an approximate
    division decides otherwise for some of them."""
    q = torch.zeros(1, 2, 4)
    q[0, :, 0] = torch.tensor([1.0, 1.0 + 2.0**-23])
    k = torch.zeros(1, tokens, 4)
    k[0, :, 0] = 1.0 + torch.arange(tokens, dtype=torch.float64) / tokens
    v = torch.randn(1, tokens, 4, generator=torch.Generator().manual_seed(0))
    return tuple(t.to(device) for t in (q, k, v))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("tau", [1.0, 0.3, 1.3])
def test_near_tie_logits_give_every_backend_the_reference_choice(backend, tau):
    """The hard choice depends only on how the logits (scale * q k^T + g) / tau are rounded after the product;
    with equal products, every backend must round them as the reference (no fma contraction, no reciprocal
    multiply, no fast-math approximation) and so choose the same group, ties included (the first maximum)."""
    device = require_backend(backend, OP)
    q, k, v = near_tie_inputs(tokens=64, device=device)
    _, hard, _ = cign_fast.assign_attention(q, k, v, mode="hard", tau=tau, return_maps=True, backend=backend)
    logits = 0.5 * (q.cpu()[0, :, 0].unsqueeze(1) * k.cpu()[0, :, 0].unsqueeze(0)) / tau  # float32, step by step
    expected = logits.argmax(dim=0)
    assert torch.equal(hard.cpu()[0].argmax(dim=0), expected)
    assert set(expected.tolist()) == ({1} if tau == 1.0 else {0, 1}), "the inputs no longer hold near ties"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", ["hard", "gumbel"])
def test_hard_forward_is_one_hot_over_groups(backend, mode):
    device = require_backend(backend, OP)
    q, k, v = (t.detach() for t in random_inputs((3, 7, 19, 8), device=device))
    out, hard, _ = cign_fast.assign_attention(
        q, k, v, mode=mode, sum_assign=True, seed=4, return_maps=True, backend=backend
    )
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.sum(dim=1), torch.ones(3, 19, device=device))
    torch.testing.assert_close(out, hard @ v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_hard_gradient_is_the_soft_gradient_through_y(rng_seed, backend):
    """Straight-through: with sum_assign the upstream dA = dout v^T does not depend on A's value, so hard
    and soft modes must give the same dq, dk (the gradient through y), while their outputs differ."""
    device = require_backend(backend, OP)
    q, k, v = random_inputs((2, 6, 9, 8), device=device)
    grad_out = torch.randn(2, 6, 8, device=device)
    results = {}
    for mode in ("soft", "hard"):
        out = cign_fast.assign_attention(q, k, v, mode=mode, sum_assign=True, backend=backend)
        results[mode] = (out, torch.autograd.grad(out, (q, k), grad_out))
    assert not torch.allclose(results["soft"][0], results["hard"][0])
    for soft_grad, hard_grad in zip(results["soft"][1], results["hard"][1], strict=True):
        torch.testing.assert_close(hard_grad, soft_grad, rtol=1e-5, atol=1e-6)


def test_gradcheck_reference_backend_soft():
    q, k, v = (t.double() for t in random_inputs((2, 4, 5, 3)))
    torch.autograd.gradcheck(
        lambda a, b, c: cign_fast.assign_attention(a, b, c, mode="soft", tau=0.9, eps=0.5, backend="reference"),
        (q, k, v),
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_custom_op_passes_opcheck(backend):
    device = require_backend(backend, OP)
    q, k, v = random_inputs((2, 5, 7, 8), device=device)
    for mode_id, return_maps, noise_batch in ((0, True, (0, 1)), (2, False, (3, 2)), (2, True, (0, 1))):
        seed = torch.tensor(3, dtype=torch.int64)
        torch.library.opcheck(
            assign_attention_fwd, (q, k, v, seed, mode_id, 1.0, 1.0, False, return_maps, *noise_batch, backend)
        )


def test_custom_op_options_follow_the_parameter_type():
    """The custom ops take AssignParams' fields (the seed first, as a tensor) in OPTION_FIELDS order."""
    fwd_args = [arg.name for arg in assign_attention_fwd._opoverload._schema.arguments]
    bwd_args = [arg.name for arg in assign_attention_bwd._opoverload._schema.arguments]
    assert fwd_args == ["q", "k", "v", "seed", *OPTION_FIELDS, "backend"]
    assert bwd_args == [
        "grad_out",
        "q",
        "k",
        "v",
        "col_lse",
        "col_argmax",
        "row_sum",
        "probs",
        "seed",
        *OPTION_FIELDS,
        "backend",
    ]


def test_compiles_without_graph_break():
    q, k, v = (t.detach() for t in random_inputs((2, 5, 7, 8)))

    def block(q, k, v):
        return cign_fast.assign_attention(q * 2, k, v, mode="gumbel", seed=3).sum(dim=1)

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), block(q, k, v))

    def block_with_drawn_seed(q, k, v):  # the model's use: the seed comes from torch's generator
        return cign_fast.assign_attention(q, k, v, mode="gumbel")

    assert torch.compile(block_with_drawn_seed, backend="aot_eager", fullgraph=True)(q, k, v).shape == q.shape


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, "q: expected a rank-3"),
        (lambda q, k, v: (q, k[:1], v), ValueError, "batch size B"),
        (lambda q, k, v: (q, k[..., :3], v), ValueError, "channels C"),
        (lambda q, k, v: (q, k, v[:, :2]), ValueError, "tokens S"),
        (lambda q, k, v: (q.long(), k, v), TypeError, "q: expected a floating-point dtype"),
        (lambda q, k, v: (q, k.double(), v), TypeError, "one dtype"),
        (lambda q, k, v: (q, k, v.to("meta")), ValueError, "one device"),
        (lambda q, k, v: (q, k, [1.0]), TypeError, "v: expected a torch.Tensor"),
    ],
)
def test_bad_tensors_raise_naming_the_argument(change, error, match):
    q, k, v = (t.detach() for t in random_inputs((2, 3, 4, 5)))
    with pytest.raises(error, match=match):
        cign_fast.assign_attention(*change(q, k, v))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda q, k, v: (q.index_fill(1, torch.tensor([0]), float("nan")), k, v), "q: contains NaN"),
        (lambda q, k, v: (q, k, v.index_fill(1, torch.tensor([1]), float("inf"))), "v: contains inf"),
    ],
)
def test_value_checks_name_the_argument_when_switched_on(value_checks, change, match):
    q, k, v = (t.detach() for t in random_inputs((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=match):
        cign_fast.assign_attention(*change(q, k, v))


def test_without_value_checks_nan_propagates(monkeypatch):
    """Off by default: a NaN input reaches the output instead of costing a host sync per call."""
    monkeypatch.delenv("CIGN_FAST_CHECKS", raising=False)
    q, k, v = (t.detach() for t in random_inputs((2, 3, 4, 5)))
    q[0, 1, 2] = float("nan")
    out = cign_fast.assign_attention(q, k, v, mode="soft", backend="reference")
    assert torch.isnan(out[0]).any() and not torch.isnan(out[1]).any()


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
def test_anomaly_mode_switches_the_value_checks_on(monkeypatch):
    monkeypatch.delenv("CIGN_FAST_CHECKS", raising=False)
    q, k, v = (t.detach() for t in random_inputs((2, 3, 4, 5)))
    k[1, 0, 0] = float("inf")
    with torch.autograd.detect_anomaly(), pytest.raises(ValueError, match="k: contains inf"):
        cign_fast.assign_attention(q, k, v)


def test_value_checks_refuse_group_indices_out_of_range_in_the_backward(value_checks):
    q, k, v = (t.detach() for t in random_inputs((2, 3, 4, 5)))
    seed = torch.tensor(0, dtype=torch.int64)
    out, col_lse, col_argmax, row_sum, _, _, probs = assign_attention_fwd(
        q, k, v, seed, 1, 1.0, 1.0, False, False, 0, 1, "reference"
    )
    with pytest.raises(ValueError, match=r"col_argmax: expected group indices in \[0, 3\), got values in \[\d, 7\]"):
        assign_attention_bwd(
            out,
            q,
            k,
            v,
            col_lse,
            col_argmax.index_fill(1, torch.tensor([2]), 7),
            row_sum,
            probs,
            seed,
            1,
            1.0,
            1.0,
            False,
            False,
            0,
            1,
            "reference",
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tau=0.0), ValueError, "tau"),
        (dict(tau=-1.0), ValueError, "tau"),
        (dict(eps=-0.1), ValueError, "eps"),
        (dict(mode="sharp"), ValueError, "mode"),
        (dict(backend="fortran"), ValueError, "backend"),
        (dict(seed=-3, mode="gumbel"), ValueError, "seed"),
        (dict(sum_assign=1), TypeError, "sum_assign"),
        (dict(return_maps="yes"), TypeError, "return_maps"),
        (dict(noise_batch_offset=-1), ValueError, "noise_batch_offset: expected an int >= 0"),
        (dict(noise_batch_stride=0), ValueError, "noise_batch_stride: expected an int >= 1"),
        (dict(noise_batch_offset=2**30, noise_batch_stride=2**30), ValueError, "global"),
    ],
)
def test_bad_options_raise_naming_the_argument(kwargs, error, match):
    q, k, v = (t.detach() for t in random_inputs((2, 3, 4, 5)))
    with pytest.raises(error, match=match):
        cign_fast.assign_attention(q, k, v, **kwargs)


def test_explicit_backend_that_cannot_run_says_why():
    q, k, v = (t.detach().double() for t in random_inputs((2, 3, 4, 5)))
    with pytest.raises(RuntimeError, match="backend 'cpp' cannot run assign_attention_forward: supports"):
        cign_fast.assign_attention(q, k, v, backend="cpp")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_cpp_backward_from_the_saved_softmax_equals_recomputing_it(rng_seed, dtype, mode):
    """The custom op's cpp path saves y = softmax_N(logits) in the forward and skips q k^T in the backward;
    the backend contract's pair recomputes it: both give the same outputs and gradients (up to rounding)."""
    require_backend("cpp", OP, dtype)
    from cign_fast.contract import AssignParams
    from cign_fast.ops import native_cpp

    q, k, v = (t.detach() for t in random_inputs((3, 7, 11, 16), dtype=dtype))
    grad_out = torch.randn(3, 7, 16).to(dtype)
    params = AssignParams(mode=MODES.index(mode), tau=0.7, eps=0.5, seed=rng_seed, return_maps=True)
    *forward, probs = native_cpp.assign_attention_forward_saving(q, k, v, params)
    assert probs.shape == (3, 7, 11) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3, 11))
    for got, want in zip(forward, native_cpp.assign_attention_forward(q, k, v, params), strict=True):
        assert torch.equal(got, want)
    saved = native_cpp.assign_attention_backward_saved(grad_out, q, k, v, *forward[1:4], params, probs)
    recomputed = native_cpp.assign_attention_backward(grad_out, q, k, v, *forward[1:4], params)
    for got, want in zip(saved, recomputed, strict=True):  # y = exp(z - lse) against exp(z - max) / sum
        rtol = 1e-4 if dtype == torch.float32 else 1e-2  # bfloat16: a last-bit change of float moves a rounding
        assert_close_to_scale(got, want.double(), rtol=rtol, atol=rtol / 10)
