"""The backend contract over a native extension (``cign_fast._C`` or ``cign_fast._cuda``).

The extensions take the fields of :class:`~cign_fast.contract.AssignParams` as plain arguments, the
two 32-bit noise keys instead of the seed, and return the Bernoulli distillation's per-row losses,
reduced here. ``native_cpp`` and ``native_cuda`` bind these functions to their extension with
``functools.partial``.
"""

from __future__ import annotations

from types import ModuleType

import torch

from cign_fast.contract import AssignParams, reduce_bernoulli_rows


def extension_args(params: AssignParams) -> tuple[int, float, float, bool, int, int, int, int]:
    """``(mode, tau, eps, sum_assign, key_a, key_b, noise_batch_offset, noise_batch_stride)`` for the extensions."""
    return (
        params.mode,
        params.tau,
        params.eps,
        params.sum_assign,
        *params.noise_keys(),
        params.noise_batch_offset,
        params.noise_batch_stride,
    )


def assign_attention_forward(
    extension: ModuleType,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: AssignParams,
    save_probs: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``(out [B,N,C], col_lse [B,S], col_argmax [B,S], row_sum [B,N], hard_map, soft_map)``; with ``save_probs``
    (an extension that has it: ``_C``) also ``probs``, the softmax over groups y [B,N,S] (float32) that
    :func:`assign_attention_backward` takes instead of recomputing q k^T (a product fewer)."""
    if save_probs:
        return extension.assign_attention_forward(q, k, v, *extension_args(params), params.return_maps, True)
    return extension.assign_attention_forward(q, k, v, *extension_args(params), params.return_maps)[:6]


def assign_attention_backward(
    extension: ModuleType,
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    col_lse: torch.Tensor,
    col_argmax: torch.Tensor,
    row_sum: torch.Tensor,
    params: AssignParams,
    probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_q, grad_k, grad_v)``, from the forward's saved softmax ``probs`` (an extension that takes it:
    ``_C``), else recomputing the map from ``q, k`` and the column statistics."""
    extra = () if probs is None else (probs,)
    return extension.assign_attention_backward(
        grad_out, q, k, v, col_lse, col_argmax, row_sum, *extension_args(params), *extra
    )


def bernoulli_distill_kl_forward(
    extension: ModuleType,
    student: torch.Tensor,
    teacher: torch.Tensor,
    start: int,
    stop: int,
    temperature: float,
    reduction: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grad_student [R, K])``: the extension's per-row losses [R] reduced with
    ``reference.reduce_bernoulli_rows`` (the gradient already carries the reduction's scale)."""
    row_loss, grad = extension.bernoulli_distill_kl_rows(student, teacher, start, stop, temperature, reduction)
    return reduce_bernoulli_rows(row_loss, reduction, stop - start), grad
