"""Reference ops in plain PyTorch: the spec (``shared/CIGN-SPEC.md``) written out, readable first.

Two kinds of function live here:

* ``*_reference`` functions are the spec as a differentiable PyTorch composition; autograd gives
  their backward. Tests hold every backend to them.
* ``*_forward`` / ``*_backward`` are the same maths as the explicit two-pass form every fused
  backend implements (what is saved, how the backward is recomputed); they are the ``reference``
  backend of the dispatcher and the readable twin of the kernels.

Shapes: ``q`` [B, N, C] (group tokens), ``k``/``v`` [B, S, C] (modality tokens); maps [B, N, S].
Softmax runs over the group axis N (dim -2) for every token s.
"""

from __future__ import annotations

import torch

from cign_fast.contract import (
    MODE_GUMBEL,
    MODE_SOFT,
    MODES,
    AssignParams,
    bernoulli_divisor,
    reduce_bernoulli_rows,
    reduce_rows,
)
from cign_fast.ops.gumbel import gumbel_noise

REDUCTIONS = ("batchmean", "sum", "mean", "none")


def assignment_logits(
    q: torch.Tensor, k: torch.Tensor, params: AssignParams, noisy: bool | None = None
) -> torch.Tensor:
    """``(scale * q k^T + g) / tau`` in float32 (float64 stays float64), [B, N, S].

    ``g`` is the Gumbel noise of ``params`` when ``noisy`` (default: in gumbel mode), else 0."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5
    logits = scale * torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2))
    if params.noisy if noisy is None else noisy:
        noise = gumbel_noise(
            tuple(logits.shape), params.seed, logits.device, params.noise_batch_offset, params.noise_batch_stride
        )
        logits = logits + noise.to(compute)
    return logits / params.tau


def clean_soft_map(q: torch.Tensor, k: torch.Tensor, params: AssignParams) -> torch.Tensor:
    """``softmax_i(scale * q k^T / tau)``, the soft map without noise in every mode, in q's dtype [B, N, S]."""
    return torch.softmax(assignment_logits(q, k, params, noisy=False), dim=-2).to(q.dtype)


def assign_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mode: str = "soft",
    tau: float = 1.0,
    eps: float = 1.0,
    sum_assign: bool = False,
    seed: int = 0,
    noise_batch_offset: int = 0,
    noise_batch_stride: int = 1,
    return_maps: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spec's AssignAttention, differentiable. Returns ``(out [B,N,C], hard [B,N,S], soft [B,N,S])``, or
    ``out`` alone without ``return_maps``; ``soft`` is the softmax without the noise (the authors' soft map,
    also in gumbel mode), ``hard`` the one-hot the output used."""
    params = AssignParams(
        mode=MODES.index(mode),
        tau=tau,
        eps=eps,
        sum_assign=sum_assign,
        seed=seed,
        noise_batch_offset=noise_batch_offset,
        noise_batch_stride=noise_batch_stride,
    )
    y = torch.softmax(assignment_logits(q, k, params), dim=-2)
    hard = torch.zeros_like(y).scatter_(-2, y.argmax(dim=-2, keepdim=True), 1.0)
    assign = y if params.mode == MODE_SOFT else hard - y.detach() + y
    if not sum_assign:
        assign = assign / (assign.sum(dim=-1, keepdim=True) + eps)
    out = torch.matmul(assign, v.to(assign.dtype)).to(q.dtype)
    if not return_maps:
        return out
    soft = clean_soft_map(q, k, params) if params.mode == MODE_GUMBEL else y.to(q.dtype)
    return out, hard.to(q.dtype), soft


def assign_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: AssignParams,
) -> tuple[torch.Tensor, ...]:
    """Forward of the fused form. Returns ``(out, col_lse [B,S], col_argmax [B,S] int32, row_sum [B,N],
    hard_map, soft_map)``; ``col_lse`` is the log-sum-exp over N of the logits, ``row_sum`` the
    normaliser ``sum_s A + eps``. The maps are empty unless ``params.return_maps``; the soft map is
    the softmax without the noise (:func:`clean_soft_map`), the hard map the one-hot actually used."""
    logits = assignment_logits(q, k, params)
    col_lse = torch.logsumexp(logits, dim=-2)
    y = torch.exp(logits - col_lse.unsqueeze(-2))
    col_argmax = logits.argmax(dim=-2)
    hard = torch.zeros_like(y).scatter_(-2, col_argmax.unsqueeze(-2), 1.0)
    assign = y if params.mode == MODE_SOFT else hard
    row_sum = assign.sum(dim=-1) + params.eps
    assign_n = assign if params.sum_assign else assign / row_sum.unsqueeze(-1)
    out = torch.matmul(assign_n, v.to(assign_n.dtype)).to(q.dtype)
    if params.return_maps:
        soft = clean_soft_map(q, k, params) if params.noisy else y.to(q.dtype)
        maps = (hard.to(q.dtype), soft)
    else:
        maps = (q.new_empty(0), q.new_empty(0))
    return (out, col_lse, col_argmax.to(torch.int32), row_sum, *maps)


def assign_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    col_lse: torch.Tensor,
    col_argmax: torch.Tensor,
    row_sum: torch.Tensor,
    params: AssignParams,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spec's backward, recomputing the map from ``q, k`` and the saved column statistics."""
    compute = col_lse.dtype
    scale = q.shape[-1] ** -0.5
    qc, kc, vc, go = (t.to(compute) for t in (q, k, v, grad_out))
    y = torch.exp(assignment_logits(q, k, params) - col_lse.unsqueeze(-2))
    if params.mode == MODE_SOFT:
        assign = y
    else:
        assign = torch.zeros_like(y).scatter_(-2, col_argmax.long().unsqueeze(-2), 1.0)
    grad_assign_n = torch.matmul(go, vc.transpose(-1, -2))  # dA_n = dout v^T
    if params.sum_assign:
        assign_n, grad_assign = assign, grad_assign_n
    else:
        assign_n = assign / row_sum.unsqueeze(-1)
        row_dot = (grad_assign_n * assign_n).sum(dim=-1, keepdim=True)
        grad_assign = (grad_assign_n - row_dot) / row_sum.unsqueeze(-1)  # dA
    grad_v = torch.matmul(assign_n.transpose(-1, -2), go)  # dv = A_n^T dout
    col_dot = (y * grad_assign).sum(dim=-2, keepdim=True)
    grad_logits = y * (grad_assign - col_dot) / params.tau  # dz (dy = dA)
    grad_q = scale * torch.matmul(grad_logits, kc)
    grad_k = scale * torch.matmul(grad_logits.transpose(-1, -2), qc)
    return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


def token_distill_kl_reference(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    temperature: float = 2.0,
    columns: slice | None = None,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` over ``columns``, teacher detached."""
    cols = columns if columns is not None else slice(None)
    compute = torch.float64 if student.dtype == torch.float64 else torch.float32
    log_p_s = torch.log_softmax(student[:, cols].to(compute) / temperature, dim=-1)
    log_p_t = torch.log_softmax(teacher.detach()[:, cols].to(compute) / temperature, dim=-1)
    per_row = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2
    return reduce_rows(per_row, reduction).to(student.dtype)


def token_distill_kl_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    start: int,
    stop: int,
    temperature: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and, in the same pass, d(loss)/d(student) for a unit upstream gradient.

    Returns ``(loss, grad_student [R, K])``, the loss in float32 (float64 for float64 inputs) and the
    gradient in the student's dtype; with ``reduction='none'`` the loss is [R] and row r of
    the gradient is that of ``loss[r]``. Gradient on the columns: ``T * (p_s - p_t) / R``."""
    compute = torch.float64 if student.dtype == torch.float64 else torch.float32
    rows = student.shape[0]
    z_s = student[:, start:stop].to(compute) / temperature
    z_t = teacher[:, start:stop].to(compute) / temperature
    log_p_s = torch.log_softmax(z_s, dim=-1)
    log_p_t = torch.log_softmax(z_t, dim=-1)
    p_t = log_p_t.exp()
    per_row = (p_t * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2
    grad = torch.zeros(student.shape, dtype=compute, device=student.device)
    grad[:, start:stop] = temperature * (log_p_s.exp() - p_t)
    if reduction in ("batchmean", "mean"):
        grad = grad / max(rows, 1)
    return reduce_rows(per_row, reduction).to(compute), grad.to(student.dtype)


def softplus(z: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^z)`` for any finite z: ``max(z, 0) + log1p(exp(-|z|))`` (what ``logaddexp(z, 0)``
    computes), with the gradient ``sigmoid(z)`` everywhere, ``z = 0`` included."""
    return torch.logaddexp(z, torch.zeros_like(z))


def reflected_logits(z_s: torch.Tensor, z_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, flip)``: teacher and student logits negated where the teacher's is > 0, so ``a <= 0``.

    Swapping the two outcomes of both Bernoullis (``z -> -z``) leaves their KL unchanged and negates
    ``p_s - p_t``; with ``a <= 0``, ``sigmoid(a) <= 1/2`` and ``softplus(a) <= log 2``."""
    flip = z_t > 0
    return torch.where(flip, -z_t, z_t), torch.where(flip, -z_s, z_s), flip


def bernoulli_kl(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """``KL(Bern(sigmoid(z_t)) || Bern(sigmoid(z_s)))`` per element (>= 0), differentiable in ``z_s``.

    ``= softplus(z_s) - softplus(z_t) - sigmoid(z_t) (z_s - z_t)``, evaluated on the reflected logits
    (``reflected_logits``): there no two large terms cancel. Written as above, logits of 40 lose the
    KL (~1e-18) to rounding: both softpluses are ~40."""
    a, b, _ = reflected_logits(z_s, z_t)
    return softplus(b) - softplus(a) - torch.sigmoid(a) * (b - a)


def bernoulli_distill_kl_reference(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    temperature: float = 1.0,
    columns: slice | None = None,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """``T^2 * sum_c KL(Bern(sigmoid(teacher/T)) || Bern(sigmoid(student/T)))`` per row over ``columns``,
    reduced (``'mean'``: over the R * columns elements); the teacher detached."""
    cols = columns if columns is not None else slice(None)
    compute = torch.float64 if student.dtype == torch.float64 else torch.float32
    z_s = student[:, cols].to(compute) / temperature
    z_t = teacher.detach()[:, cols].to(compute) / temperature
    per_row = bernoulli_kl(z_s, z_t).sum(dim=-1) * temperature**2
    return reduce_bernoulli_rows(per_row, reduction, z_s.shape[1]).to(student.dtype)


def bernoulli_distill_kl_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    start: int,
    stop: int,
    temperature: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and, in the same pass, d(loss)/d(student) for a unit upstream gradient.

    Returns ``(loss, grad_student [R, K])`` as ``token_distill_kl_forward`` does. Gradient on the
    columns: ``T * (p_s - p_t) / bernoulli_divisor(...)``, from the reflected logits as
    ``+-(sigmoid(b) - sigmoid(a))`` (accurate also where both probabilities are near 1)."""
    compute = torch.float64 if student.dtype == torch.float64 else torch.float32
    z_s = student[:, start:stop].to(compute) / temperature
    z_t = teacher[:, start:stop].to(compute) / temperature
    per_row = bernoulli_kl(z_s, z_t).sum(dim=-1) * temperature**2
    a, b, flip = reflected_logits(z_s, z_t)
    p_diff = torch.sigmoid(b) - torch.sigmoid(a)
    scale = temperature / bernoulli_divisor(reduction, student.shape[0], stop - start)
    grad = torch.zeros(student.shape, dtype=compute, device=student.device)
    grad[:, start:stop] = scale * torch.where(flip, -p_diff, p_diff)
    return reduce_bernoulli_rows(per_row, reduction, stop - start), grad.to(student.dtype)
