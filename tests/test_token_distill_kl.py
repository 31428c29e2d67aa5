"""token_distill_kl: every backend against the reference, the reference against a direct float64
computation, its properties, the custom op and the input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cign_fast
from cign_fast.ops.reference import token_distill_kl_reference
from cign_fast.ops.token_distill_kl import token_distill_kl_fwd

from helpers import ALL_BACKENDS, require_backend

OP = "token_distill_kl_forward"
CASES = [  # (R, K, columns)
    (6, 10, slice(0, 7)),
    (1, 1, None),
    (5, 3, slice(1, 3)),
    (33, 37, slice(0, 36)),
    (4, 300, slice(2, 289)),
]


def logits(rows, width, dtype=torch.float32, device="cpu", strided=False):
    """Student and teacher logits [R, K]; ``strided`` gives transposed, non-contiguous views."""
    if strided:
        student, teacher = (3 * torch.randn(width, rows, device=device).t() for _ in range(2))
    else:
        student, teacher = (3 * torch.randn(rows, width, device=device) for _ in range(2))
    return student.to(dtype).requires_grad_(), teacher.to(dtype)


def direct_float64(student, teacher, temperature, columns, reduction):
    s = student.detach().double().numpy()[:, columns or slice(None)] / temperature
    t = teacher.detach().double().numpy()[:, columns or slice(None)] / temperature
    log_p_s = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    log_p_t = t - np.log(np.exp(t - t.max(1, keepdims=True)).sum(1, keepdims=True)) - t.max(1, keepdims=True)
    per_row = (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(1) * temperature**2
    return {"batchmean": per_row.mean(), "mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]


@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_reference_matches_direct_float64(rng_seed, reduction):
    student, teacher = logits(7, 12, torch.float64)
    got = token_distill_kl_reference(student, teacher, temperature=2.5, columns=slice(0, 9), reduction=reduction)
    expected = torch.as_tensor(direct_float64(student, teacher, 2.5, slice(0, 9), reduction))
    torch.testing.assert_close(got.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}")
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_backend_matches_reference_fp32(rng_seed, backend, reduction, case, strided):
    device = require_backend(backend, OP)
    rows, width, columns = case
    student, teacher = logits(rows, width, device=device, strided=strided)
    loss = cign_fast.token_distill_kl(
        student, teacher, temperature=2.0, columns=columns, reduction=reduction, backend=backend
    )
    upstream = torch.rand_like(loss) + 0.5
    (grad,) = torch.autograd.grad(loss, student, upstream)
    leaf = student.detach().double().requires_grad_()
    want = token_distill_kl_reference(leaf, teacher.double(), temperature=2.0, columns=columns, reduction=reduction)
    (want_grad,) = torch.autograd.grad(want, leaf, upstream.double())
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backend_bf16_within_pytorch_error(rng_seed, backend):
    device = require_backend(backend, OP, torch.bfloat16)
    student, teacher = logits(64, 220, torch.bfloat16, device=device)
    loss = cign_fast.token_distill_kl(student, teacher, columns=slice(0, 180), backend=backend)
    (grad,) = torch.autograd.grad(loss, student)
    leaf = student.detach().double().requires_grad_()
    truth = token_distill_kl_reference(leaf, teacher.double(), columns=slice(0, 180))
    (truth_grad,) = torch.autograd.grad(truth, leaf)
    # PyTorch's own bf16 error: F.kl_div on bf16 log-softmaxes, the eager way of writing this loss.
    eager_leaf = student.detach().requires_grad_()
    log_p_s = torch.log_softmax(eager_leaf[:, :180] / 2.0, dim=-1)
    log_p_t = torch.log_softmax(teacher[:, :180] / 2.0, dim=-1)
    eager = torch.nn.functional.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * 4.0
    (eager_grad,) = torch.autograd.grad(eager, eager_leaf)
    assert abs(loss.double() - truth).item() <= 2 * abs(eager.double() - truth).item() + 1e-3 * truth.item()
    grad_err = (grad.double() - truth_grad).abs().max().item()
    assert grad_err <= 2 * (eager_grad.double() - truth_grad).abs().max().item() + 1e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_when_student_equals_teacher_positive_otherwise(backend):
    device = require_backend(backend, OP)
    student, teacher = logits(8, 20, device=device)
    same = cign_fast.token_distill_kl(student, student.detach().clone(), backend=backend)
    assert abs(same.item()) < 1e-6
    assert cign_fast.token_distill_kl(student, teacher, backend=backend).item() > 1e-3


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6, 1e10, 1e30, 1e38])
def test_constant_row_offsets_change_nothing_beyond_input_rounding(backend, dtype, offset):
    """The KL is shift-invariant per row: with student + offset and teacher - offset every backend gives
    the float64 reference of the very inputs it was handed (after their own rounding), and KL >= 0."""
    device = require_backend(backend, OP, dtype)
    generator = torch.Generator().manual_seed(13)
    student, teacher = (torch.randn(16, 36, generator=generator) for _ in range(2))
    student = (student + offset).to(device, dtype).requires_grad_()
    teacher = (teacher - offset).to(device, dtype)
    loss = cign_fast.token_distill_kl(student, teacher, columns=slice(0, 27), reduction="none", backend=backend)
    (grad,) = torch.autograd.grad(loss.sum(), student)
    leaf = student.detach().cpu().double().requires_grad_()
    want = token_distill_kl_reference(leaf, teacher.cpu().double(), columns=slice(0, 27), reduction="none")
    (want_grad,) = torch.autograd.grad(want.sum(), leaf)
    assert torch.isfinite(loss).all() and (loss >= 0).all(), loss
    torch.testing.assert_close(loss.detach().cpu().double(), want.detach(), rtol=1e-4, atol=1e-5)
    grad_tolerance = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    torch.testing.assert_close(grad.cpu().double(), want_grad, **grad_tolerance)


def test_teacher_gets_no_gradient_and_columns_outside_the_range_none():
    student, teacher = logits(5, 9)
    teacher.requires_grad_()
    loss = cign_fast.token_distill_kl(student, teacher, columns=(2, 6))
    loss.backward()
    assert teacher.grad is None
    assert torch.equal(student.grad[:, :2], torch.zeros(5, 2)) and torch.equal(student.grad[:, 6:], torch.zeros(5, 3))
    assert student.grad[:, 2:6].abs().sum() > 0


def test_temperature_scaling_matches_the_definition():
    student, teacher = logits(4, 6, torch.float64)
    for temperature in (0.5, 1.0, 4.0):
        got = cign_fast.token_distill_kl(student, teacher, temperature=temperature, backend="reference")
        torch.testing.assert_close(
            got.detach(), torch.as_tensor(direct_float64(student, teacher, temperature, None, "batchmean"))
        )


def test_gradcheck_reference_backend():
    student, teacher = logits(3, 5, torch.float64)
    for reduction in ("batchmean", "none"):
        torch.autograd.gradcheck(
            lambda s, reduction=reduction: cign_fast.token_distill_kl(
                s, teacher, columns=(0, 4), reduction=reduction, backend="reference"
            ),
            (student,),
        )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_custom_op_passes_opcheck(backend):
    device = require_backend(backend, OP)
    student, teacher = logits(6, 11, device=device)
    for reduction in ("batchmean", "none"):
        torch.library.opcheck(token_distill_kl_fwd, (student, teacher, 1, 9, 2.0, reduction, backend))


def test_compiles_without_graph_break():
    student, teacher = (t.detach() for t in logits(6, 11))
    fn = lambda s, t: cign_fast.token_distill_kl(s * 1.5, t, columns=(0, 8))  # noqa: E731
    torch.testing.assert_close(
        torch.compile(fn, backend="aot_eager", fullgraph=True)(student, teacher), fn(student, teacher)
    )


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (lambda s, t: (s[0], t), {}, ValueError, "student_logits: expected a rank-2"),
        (lambda s, t: (s, t[:, :3]), {}, ValueError, "teacher_logits: expected the student's shape"),
        (lambda s, t: (s.int(), t), {}, TypeError, "student_logits: expected a floating-point dtype"),
        (lambda s, t: (s, t.double()), {}, TypeError, "one dtype"),
        (lambda s, t: (s, t.to("meta")), {}, ValueError, "one device"),
        (
            lambda s, t: (s.index_fill(0, torch.tensor([1]), float("nan")), t),
            {},
            ValueError,
            "student_logits: contains NaN",
        ),
        (
            lambda s, t: (s, t.index_fill(1, torch.tensor([0]), float("inf"))),
            {},
            ValueError,
            "teacher_logits: contains inf",
        ),
        (lambda s, t: (s, t), {"temperature": 0.0}, ValueError, "temperature"),
        (lambda s, t: (s, t), {"columns": slice(5, 5)}, ValueError, "columns"),
        (lambda s, t: (s, t), {"columns": slice(0, 6, 2)}, ValueError, "columns"),
        (lambda s, t: (s, t), {"reduction": "max"}, ValueError, "reduction"),
    ],
)
def test_bad_input_raises_naming_the_argument(value_checks, args, kwargs, error, match):
    student, teacher = (t.detach() for t in logits(4, 7))
    with pytest.raises(error, match=match):
        cign_fast.token_distill_kl(*args(student, teacher), **kwargs)
