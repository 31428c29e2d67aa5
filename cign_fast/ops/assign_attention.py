"""``assign_attention``: the grouping block's assignment attention, as a torch custom op with autograd.

Public entry point :func:`assign_attention`; the maths is in :mod:`cign_fast.ops.reference`, the
backends are chosen by :mod:`cign_fast.ops.backends`. The forward and backward are registered as
the custom ops ``cign_fast::assign_attention_fwd`` / ``cign_fast::assign_attention_bwd`` and joined
by ``torch.library.register_autograd`` (which wraps them in a ``torch.autograd.Function``), so
``torch.compile`` traces through the op without a graph break.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cign_fast.ops.backends import backend_function, select_backend
from cign_fast.ops.checks import (
    check_choice, check_finite, check_float_tensor, check_non_negative, check_positive, check_same_device,
    check_same_dtype,
)
from cign_fast.ops.gumbel import MAX_NOISE_ELEMENTS, seed_keys
from cign_fast.ops.reference import MODE_GUMBEL, MODES


@torch.library.custom_op("cign_fast::assign_attention_fwd", mutates_args=())
def assign_attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, mode: int, tau: float, eps: float, sum_assign: bool, seed: Tensor,
    return_maps: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(out, col_lse, col_argmax, row_sum, hard_map, soft_map)``, see ``reference.assign_attention_forward``.

    ``seed`` is a 0-d int64 CPU tensor (so a drawn seed needs no ``.item()`` under ``torch.compile``)."""
    forward = backend_function(backend, "assign_attention_forward")
    return tuple(forward(q, k, v, mode, tau, eps, sum_assign, int(seed), return_maps))


@assign_attention_fwd.register_fake
def _(q, k, v, mode, tau, eps, sum_assign, seed, return_maps, backend):
    batch, groups, _ = q.shape
    tokens = k.shape[1]
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    map_shape = (batch, groups, tokens) if return_maps else (0,)
    return (
        q.new_empty(q.shape), q.new_empty((batch, tokens), dtype=stat),
        q.new_empty((batch, tokens), dtype=torch.int32), q.new_empty((batch, groups), dtype=stat),
        q.new_empty(map_shape), q.new_empty(map_shape),
    )


@torch.library.custom_op("cign_fast::assign_attention_bwd", mutates_args=())
def assign_attention_bwd(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, col_lse: Tensor, col_argmax: Tensor, row_sum: Tensor,
    mode: int, tau: float, eps: float, sum_assign: bool, seed: Tensor, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``(grad_q, grad_k, grad_v)``, see ``reference.assign_attention_backward``."""
    backward = backend_function(backend, "assign_attention_backward")
    return tuple(backward(grad_out, q, k, v, col_lse, col_argmax, row_sum, mode, tau, eps, sum_assign, int(seed)))


@assign_attention_bwd.register_fake
def _(grad_out, q, k, v, col_lse, col_argmax, row_sum, mode, tau, eps, sum_assign, seed, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, mode, tau, eps, sum_assign, seed, _, backend = inputs
    _, col_lse, col_argmax, row_sum, _, _ = output
    ctx.save_for_backward(q, k, v, col_lse, col_argmax, row_sum)
    ctx.args = (mode, tau, eps, sum_assign, seed, backend)


def _backward(ctx, grad_out, *unused_grads):
    q, k, v, col_lse, col_argmax, row_sum = ctx.saved_tensors
    grads = assign_attention_bwd(grad_out.contiguous(), q, k, v, col_lse, col_argmax, row_sum, *ctx.args)
    return (*grads, None, None, None, None, None, None, None)


assign_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def check_assign_inputs(q: Tensor, k: Tensor, v: Tensor, tau: float, eps: float) -> None:
    """Validate shapes, dtypes, devices and values; raises ValueError/TypeError naming the argument."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, tensor, 3)
    check_same_device(q=q, k=k, v=v)
    check_same_dtype(q=q, k=k, v=v)
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch size B: expected q, k, v to agree, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.shape[2] == k.shape[2] == v.shape[2]):
        raise ValueError(f"channels C: expected q, k, v to agree, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"tokens S: expected k and v to agree, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if min(q.shape) == 0 or min(k.shape) == 0:
        raise ValueError(f"q, k, v: expected non-empty tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[0] * q.shape[1] * k.shape[1] >= MAX_NOISE_ELEMENTS:
        raise ValueError(f"q, k: the [B, N, S] map would have >= 2**32 elements ({tuple(q.shape[:2]) + (k.shape[1],)})")
    check_positive("tau", tau)
    check_non_negative("eps", eps)
    if not torch.compiler.is_compiling():
        for name, tensor in (("q", q), ("k", k), ("v", v)):
            check_finite(name, tensor)


def assign_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mode: str = "soft",
    tau: float = 1.0,
    eps: float = 1.0,
    sum_assign: bool = False,
    seed: int | None = None,
    return_maps: bool = False,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Assignment attention of group tokens onto modality tokens, softmax over the group axis.

    Args:
        q: group-token queries [B, N, C]. k, v: modality-token keys and values [B, S, C].
        mode: ``"soft"`` (softmax), ``"hard"`` (one-hot of the argmax, straight-through gradient)
            or ``"gumbel"`` (hard with Gumbel noise from ``seed``).
        tau: temperature dividing the logits (and the noise) before the softmax.
        eps: added to each group's total assignment before normalising over tokens.
        sum_assign: skip the normalisation over tokens.
        seed: Gumbel seed; ``None`` draws one from torch's default generator.
        return_maps: also return the hard and soft maps [B, N, S] (no gradient flows through them).
        backend: ``"auto"``, ``"reference"``, ``"cpp"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``out`` [B, N, C], or ``(out, hard_map, soft_map)`` with ``return_maps``.
    """
    check_choice("mode", mode, MODES)
    check_assign_inputs(q, k, v, tau, eps)
    if not isinstance(sum_assign, bool):
        raise TypeError(f"sum_assign: expected a bool, got {type(sum_assign).__name__}")
    mode_id = MODES.index(mode)
    if seed is None and mode_id == MODE_GUMBEL:
        seed_tensor = torch.randint(0, 2**62, (), dtype=torch.int64)  # torch's default CPU generator
    else:
        seed_keys(seed or 0)  # validates the range
        seed_tensor = torch.tensor(seed or 0, dtype=torch.int64)
    name = select_backend(backend, "assign_attention_forward", q.device, q.dtype)
    out, _, _, _, hard_map, soft_map = assign_attention_fwd(
        q, k, v, mode_id, float(tau), float(eps), sum_assign, seed_tensor, return_maps, name
    )
    return (out, hard_map, soft_map) if return_maps else out
