"""bernoulli_distill_kl: every backend against the reference, the reference against a direct float64
computation, its properties (shift sensitivity, kl >= 0, = 0 iff student == teacher, huge logits),
the custom op and the input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cign_fast
from cign_fast.ops.backends import BACKENDS, backend_report
from cign_fast.ops.bernoulli_distill_kl import OP, bernoulli_distill_kl_fwd
from cign_fast.ops.reference import bernoulli_distill_kl_reference, bernoulli_kl

from helpers import ALL_BACKENDS, require_backend

REDUCTIONS = ("batchmean", "mean", "sum", "none")
CASES = [  # (R, K, columns)
    (6, 10, slice(0, 7)),
    (1, 1, None),
    (5, 3, slice(1, 3)),
    (33, 37, slice(0, 36)),
    (4, 300, slice(2, 289)),
]
LOW_PRECISION = [
    (name, dtype)
    for name in ALL_BACKENDS
    for dtype in (torch.bfloat16, torch.float16)
    if dtype in BACKENDS[name].dtypes
]


def logits(rows, width, dtype=torch.float32, device="cpu", strided=False, seed=0, scale=3.0):
    """Student and teacher logits [R, K]; ``strided`` gives transposed, non-contiguous views."""
    generator = torch.Generator().manual_seed(seed)
    shape = (width, rows) if strided else (rows, width)
    student, teacher = (scale * torch.randn(shape, generator=generator) for _ in range(2))
    if strided:
        student, teacher = student.t(), teacher.t()
    return student.to(device, dtype).requires_grad_(), teacher.to(device, dtype)


def direct_float64(student, teacher, temperature, columns, reduction):
    """``T^2 sum_c [p log(p / q) + (1 - p) log((1 - p) / (1 - q))]``, p and q the teacher's and the
    student's sigmoids, in numpy float64 (moderate logits only)."""
    cols = columns or slice(None)
    p = 1 / (1 + np.exp(-teacher.detach().double().numpy()[:, cols] / temperature))
    q = 1 / (1 + np.exp(-student.detach().double().numpy()[:, cols] / temperature))
    per_row = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).sum(1) * temperature**2
    elements = per_row.size * p.shape[1]
    return {"batchmean": per_row.mean(), "mean": per_row.sum() / elements, "sum": per_row.sum(), "none": per_row}[
        reduction
    ]


def loss_and_grad(backend, student, teacher, upstream=None, **kwargs):
    loss = cign_fast.bernoulli_distill_kl(student, teacher, backend=backend, **kwargs)
    (grad,) = torch.autograd.grad(loss, student, upstream)
    return loss, grad


def reference_float64(student, teacher, upstream=None, **kwargs):
    leaf = student.detach().cpu().double().requires_grad_()
    loss = bernoulli_distill_kl_reference(leaf, teacher.cpu().double(), **kwargs)
    (grad,) = torch.autograd.grad(loss, leaf, None if upstream is None else upstream.cpu().double())
    return loss.detach(), grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_reference_matches_direct_float64(reduction, temperature):
    student, teacher = logits(7, 12, torch.float64)
    got = bernoulli_distill_kl_reference(
        student, teacher, temperature=temperature, columns=slice(0, 9), reduction=reduction
    )
    expected = torch.as_tensor(direct_float64(student, teacher, temperature, slice(0, 9), reduction))
    torch.testing.assert_close(got.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}")
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
def test_backend_matches_reference_fp32(backend, case, strided):
    device = require_backend(backend, OP)
    rows, width, columns = case
    student, teacher = logits(rows, width, device=device, strided=strided, seed=rows * width)
    generator = torch.Generator().manual_seed(rows)
    for reduction in REDUCTIONS:
        upstream = (torch.rand(rows if reduction == "none" else (), generator=generator) + 0.5).to(device)
        loss, grad = loss_and_grad(
            backend, student, teacher, upstream, temperature=2.0, columns=columns, reduction=reduction
        )
        want, want_grad = reference_float64(
            student, teacher, upstream, temperature=2.0, columns=columns, reduction=reduction
        )
        assert loss.dtype == torch.float32 and grad.dtype == torch.float32 and grad.shape == student.shape
        torch.testing.assert_close(loss.cpu().double(), want, rtol=1e-5, atol=1e-6, msg=reduction)
        torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=1e-4, atol=1e-7, msg=reduction)


@pytest.mark.parametrize("backend, dtype", LOW_PRECISION, ids=lambda v: str(v).replace("torch.", ""))
def test_backend_low_precision_within_pytorch_error(backend, dtype):
    device = require_backend(backend, OP, dtype)
    student, teacher = logits(64, 220, dtype, device=device, seed=5)
    loss, grad = loss_and_grad(backend, student, teacher, temperature=2.0, columns=slice(0, 180))
    truth, truth_grad = reference_float64(student, teacher, temperature=2.0, columns=slice(0, 180))
    # PyTorch's own low-precision error: the loss written the eager way in the input dtype, as the
    # cross-entropy of the student's sigmoids against the teacher's minus the teacher's entropy.
    eager_leaf = student.detach().requires_grad_()
    z_s, z_t = eager_leaf[:, :180] / 2.0, teacher[:, :180] / 2.0
    p_t = torch.sigmoid(z_t)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    eager = (bce(z_s, p_t, reduction="sum") - bce(z_t, p_t, reduction="sum")) * 4.0 / 64
    (eager_grad,) = torch.autograd.grad(eager, eager_leaf)
    assert abs(loss.double().cpu() - truth).item() <= 2 * abs(eager.double().cpu() - truth).item() + 1e-3 * truth.item()
    grad_err = (grad.double().cpu() - truth_grad).abs().max().item()
    assert grad_err <= 2 * (eager_grad.double().cpu() - truth_grad).abs().max().item() + 1e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_exactly_when_student_equals_teacher_positive_otherwise(backend):
    device = require_backend(backend, OP)
    student, teacher = logits(8, 20, device=device, seed=1)
    same = cign_fast.bernoulli_distill_kl(student, student.detach().clone(), reduction="none", backend=backend)
    assert torch.equal(same, torch.zeros_like(same))
    one_differs = student.detach().clone()
    one_differs[3, 7] += 0.5
    per_row = cign_fast.bernoulli_distill_kl(one_differs, student.detach(), reduction="none", backend=backend)
    assert per_row[3] > 1e-3 and torch.equal(per_row[torch.arange(8) != 3], torch.zeros(7, device=device))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_element_is_non_negative_up_to_rounding(backend):
    """Each element as a row of its own ([N, 1], reduction 'none'), over logits from 1e-3 to 1e30,
    unrelated pairs and pairs within 0.1 % of each other (there the KL, ~1e-7 |z|^2 sigmoid'(z), is
    below the rounding of its float32 terms: it may come out that far below 0, never further)."""
    device = require_backend(backend, OP)
    generator = torch.Generator().manual_seed(2)
    magnitude = 10.0 ** torch.empty(4000).uniform_(-3, 30, generator=generator)
    sign = torch.randint(0, 2, (2, 4000), generator=generator) * 2 - 1
    teacher = sign[0] * magnitude
    student = torch.where(
        torch.arange(4000) % 2 == 0,
        sign[1] * magnitude.flip(0),
        teacher * (1 + 1e-3 * torch.randn(4000, generator=generator)),
    )
    kl = cign_fast.bernoulli_distill_kl(
        student[:, None].to(device), teacher[:, None].to(device), reduction="none", backend=backend
    )
    assert torch.isfinite(kl).all()
    rounding = 4 * torch.finfo(torch.float32).eps * (1 + student.abs() + teacher.abs())
    assert (kl.cpu() >= -rounding).all(), f"kl < 0 at {kl.argmin().item()}: {kl.min().item()}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_uniform_shift_of_the_old_logits_changes_the_loss(backend):
    """The property the softmax KL lacks: the student's old logits all 5 lower than the teacher's."""
    device = require_backend(backend, OP)
    student, teacher = logits(16, 30, device=device, seed=3)
    shifted = teacher.clone()
    shifted[:, :20] -= 5.0
    bernoulli = cign_fast.bernoulli_distill_kl(shifted, teacher, temperature=2.0, columns=(0, 20), backend=backend)
    softmax = cign_fast.token_distill_kl(shifted, teacher, temperature=2.0, columns=(0, 20), backend="reference")
    assert abs(softmax.item()) < 1e-5
    assert bernoulli.item() > 1.0
    further = teacher.clone()
    further[:, :20] -= 10.0
    assert (
        cign_fast.bernoulli_distill_kl(further, teacher, temperature=2.0, columns=(0, 20), backend=backend) > bernoulli
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("offset", [-30.0, 30.0, 1e4])
def test_large_offsets_keep_relative_precision(backend, offset):
    """Both logits near +-30 (KL ~1e-12, where the naive formula returns rounding noise of ~1e-6) and
    near 1e4 (both sigmoids 1: KL 0 in float32, exactly 0 in float64)."""
    device = require_backend(backend, OP)
    generator = torch.Generator().manual_seed(4)
    student, teacher = (offset + torch.randn(6, 40, generator=generator) for _ in range(2))
    student, teacher = student.to(device).requires_grad_(), teacher.to(device)
    loss, grad = loss_and_grad(backend, student, teacher, torch.ones(6, device=device), reduction="none")
    want, want_grad = reference_float64(student, teacher, torch.ones(6), reduction="none")
    assert (loss >= 0).all()
    torch.testing.assert_close(loss.cpu().double(), want, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_logits_of_1e30(backend):
    """|logits| ~ 1e30: every sigmoid is 0 or 1, so the KL of an element is the student's logit where
    the two disagree (-log of the student's probability of the teacher's outcome) and 0 elsewhere,
    and the gradient T (p_s - p_t) / R is 0 or +-T / R."""
    device = require_backend(backend, OP)
    student, teacher = (t.detach() for t in logits(8, 16, device=device, seed=6, scale=1e30))
    student.requires_grad_()
    loss, grad = loss_and_grad(backend, student, teacher, temperature=2.0)
    disagree = torch.relu(-torch.sign(teacher) * student.detach()).double()
    expected = 2.0 * disagree.sum() / 8
    torch.testing.assert_close(loss.cpu().double(), expected.cpu(), rtol=1e-5, atol=0.0)
    expected_grad = 2.0 * ((student > 0).double() - (teacher > 0).double()) / 8
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-6, atol=0.0)


def test_reduction_mean_is_the_mean_over_elements():
    student, teacher = logits(5, 12, seed=7)
    loss = {r: cign_fast.bernoulli_distill_kl(student, teacher, columns=(2, 10), reduction=r) for r in REDUCTIONS}
    torch.testing.assert_close(loss["batchmean"], loss["sum"] / 5)
    torch.testing.assert_close(loss["mean"], loss["sum"] / (5 * 8))
    torch.testing.assert_close(loss["none"].sum(), loss["sum"])
    # torch's own elementwise Bernoulli KL, averaged over elements by kl_div's 'mean'
    z_s, z_t = student.detach()[:, 2:10], teacher[:, 2:10]
    torch.testing.assert_close(loss["mean"].detach(), bernoulli_kl(z_s, z_t).mean())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_only_the_student_columns_in_the_range_get_gradients(backend):
    device = require_backend(backend, OP)
    student, teacher = logits(5, 9, device=device, seed=8)
    teacher.requires_grad_()
    cign_fast.bernoulli_distill_kl(student, teacher, columns=(2, 6), backend=backend).backward()
    assert teacher.grad is None
    outside = torch.ones(9, dtype=torch.bool)
    outside[2:6] = False
    assert torch.count_nonzero(student.grad[:, outside]) == 0 and student.grad[:, 2:6].abs().min() > 0


def test_gradient_is_right_at_logits_of_zero():
    """softplus' gradient at 0 is 1/2 (a max(z, 0) composition would give 0 or 1 there)."""
    student = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.full((2, 3), 1.5, dtype=torch.float64)
    loss, grad = loss_and_grad("reference", student, teacher, reduction="sum")
    torch.testing.assert_close(grad, (0.5 - torch.sigmoid(teacher)).expand(2, 3))


def test_gradcheck_reference_backend():
    student, teacher = logits(3, 5, torch.float64)
    for reduction in ("batchmean", "mean", "none"):
        torch.autograd.gradcheck(
            lambda s, reduction=reduction: cign_fast.bernoulli_distill_kl(
                s, teacher, temperature=1.5, columns=(0, 4), reduction=reduction, backend="reference"
            ),
            (student,),
        )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_custom_op_passes_opcheck(backend):
    device = require_backend(backend, OP)
    student, teacher = logits(6, 11, device=device)
    for reduction in ("batchmean", "mean", "none"):
        torch.library.opcheck(bernoulli_distill_kl_fwd, (student, teacher, 1, 9, 2.0, reduction, backend))


def test_compiles_without_graph_break():
    student, teacher = (t.detach() for t in logits(6, 11))
    fn = lambda s, t: cign_fast.bernoulli_distill_kl(s * 1.5, t, columns=(0, 8))  # noqa: E731
    torch.testing.assert_close(
        torch.compile(fn, backend="aot_eager", fullgraph=True)(student, teacher), fn(student, teacher)
    )


def test_info_lists_the_op_for_every_backend():
    report = backend_report(torch.device("cpu"))
    assert report["reference"][OP] is None
    assert all(OP in ops for ops in report.values())


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (lambda s, t: (s[0], t), {}, ValueError, "student_logits: expected a rank-2"),
        (lambda s, t: (s, t[:, :3]), {}, ValueError, "teacher_logits: expected the student's shape"),
        (lambda s, t: (s.int(), t), {}, TypeError, "student_logits: expected a floating-point dtype"),
        (lambda s, t: (s, t.double()), {}, TypeError, "one dtype"),
        (lambda s, t: (s, t.to("meta")), {}, ValueError, "one device"),
        (lambda s, t: (s[:0], t[:0]), {}, ValueError, "student_logits: expected at least one row"),
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
        (lambda s, t: (s, t), {"temperature": -1.0}, ValueError, "temperature"),
        (lambda s, t: (s, t), {"columns": slice(6, 2)}, ValueError, "columns"),
        (lambda s, t: (s, t), {"columns": (0, 6, 2)}, ValueError, "columns"),
        (lambda s, t: (s, t), {"reduction": "elementwise"}, ValueError, "reduction"),
        (lambda s, t: (s, t), {"backend": "numpy"}, ValueError, "backend"),
    ],
)
def test_bad_input_raises_naming_the_argument(value_checks, args, kwargs, error, match):
    student, teacher = (t.detach() for t in logits(4, 7))
    with pytest.raises(error, match=match):
        cign_fast.bernoulli_distill_kl(*args(student, teacher), **kwargs)
