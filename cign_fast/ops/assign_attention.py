"""``assign_attention``: the grouping block's assignment attention, as a torch custom op with autograd.

Public entry point :func:`assign_attention`; the maths is in :mod:`cign_fast.ops.reference`, the
parameters travel as one :class:`~cign_fast.contract.AssignParams`, the backends are chosen by
:mod:`cign_fast.ops.backends`. The forward and backward are registered as the custom ops
``cign_fast::assign_attention_fwd`` / ``cign_fast::assign_attention_bwd`` and joined by
``torch.library.register_autograd`` (which wraps them in a ``torch.autograd.Function``), so
``torch.compile`` traces through the op without a graph break. A custom op's schema takes no
dataclass: at its boundary the parameters are the seed (a 0-d int64 CPU tensor, so that a drawn
seed needs no ``.item()`` under ``torch.compile``) and the other fields in ``OPTION_FIELDS`` order.
A backend that saves the forward's softmax (``cpp``: :func:`saves_probs`) hands it to the backward
through the ``probs`` output, which is empty for the others.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from cign_fast.contract import MAX_NOISE_ELEMENTS, MODE_GUMBEL, MODES, AssignParams, seed_keys
from cign_fast.ops.backends import backend_function, backend_module, select_backend
from cign_fast.ops.checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_group_indices,
    check_non_negative,
    check_positive,
    check_same_device,
    check_same_dtype,
    value_checks_enabled,
)

OPTION_FIELDS = tuple(field.name for field in dataclasses.fields(AssignParams) if field.name != "seed")


def op_options(params: AssignParams) -> tuple:
    """``params`` without the seed, as the custom ops take them (``OPTION_FIELDS`` order)."""
    return tuple(getattr(params, name) for name in OPTION_FIELDS)


def params_from_op(seed: Tensor, options: tuple) -> AssignParams:
    """The :class:`AssignParams` a custom op call carries (inside the op: the seed tensor is real there)."""
    return AssignParams(seed=int(seed), **dict(zip(OPTION_FIELDS, options, strict=True)))


@torch.library.custom_op("cign_fast::assign_attention_fwd", mutates_args=())
def assign_attention_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seed: Tensor,
    mode: int,
    tau: float,
    eps: float,
    sum_assign: bool,
    return_maps: bool,
    noise_batch_offset: int,
    noise_batch_stride: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(out, col_lse, col_argmax, row_sum, hard_map, soft_map, probs)``, see ``reference.assign_attention_forward``;
    ``probs`` is the softmax y [B, N, S] (float32) the backward reuses, from a backend that saves it
    (:func:`saves_probs`), else empty."""
    params = params_from_op(seed, (mode, tau, eps, sum_assign, return_maps, noise_batch_offset, noise_batch_stride))
    if saves_probs(backend):
        return tuple(backend_function(backend, "assign_attention_forward_saving")(q, k, v, params))
    outputs = backend_function(backend, "assign_attention_forward")(q, k, v, params)
    return (*outputs, q.new_empty(0, dtype=outputs[1].dtype))


def saves_probs(backend: str) -> bool:
    """Whether ``backend`` saves the forward's softmax for the backward (``assign_attention_forward_saving`` and
    ``assign_attention_backward_saved``): memory [B, N, S] float32 held until the backward, a product saved."""
    return hasattr(backend_module(backend), "assign_attention_forward_saving")


@assign_attention_fwd.register_fake
def _(q, k, v, seed, mode, tau, eps, sum_assign, return_maps, noise_batch_offset, noise_batch_stride, backend):
    batch, groups, _ = q.shape
    tokens = k.shape[1]
    stat = torch.float64 if q.dtype == torch.float64 else torch.float32
    map_shape = (batch, groups, tokens) if return_maps else (0,)
    return (
        q.new_empty(q.shape),
        q.new_empty((batch, tokens), dtype=stat),
        q.new_empty((batch, tokens), dtype=torch.int32),
        q.new_empty((batch, groups), dtype=stat),
        q.new_empty(map_shape),
        q.new_empty(map_shape),
        q.new_empty((batch, groups, tokens) if saves_probs(backend) else (0,), dtype=stat),
    )


@torch.library.custom_op("cign_fast::assign_attention_bwd", mutates_args=())
def assign_attention_bwd(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    col_lse: Tensor,
    col_argmax: Tensor,
    row_sum: Tensor,
    probs: Tensor,
    seed: Tensor,
    mode: int,
    tau: float,
    eps: float,
    sum_assign: bool,
    return_maps: bool,
    noise_batch_offset: int,
    noise_batch_stride: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``(grad_q, grad_k, grad_v)``, see ``reference.assign_attention_backward``."""
    params = params_from_op(seed, (mode, tau, eps, sum_assign, return_maps, noise_batch_offset, noise_batch_stride))
    if value_checks_enabled():
        check_group_indices("col_argmax", col_argmax, q.shape[1])
    if probs.numel() > 0 and saves_probs(backend):
        backward = backend_function(backend, "assign_attention_backward_saved")
        return tuple(backward(grad_out, q, k, v, col_lse, col_argmax, row_sum, params, probs))
    backward = backend_function(backend, "assign_attention_backward")
    return tuple(backward(grad_out, q, k, v, col_lse, col_argmax, row_sum, params))


@assign_attention_bwd.register_fake
def _(grad_out, q, k, v, col_lse, col_argmax, row_sum, probs, seed, *options_and_backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, seed, *options, backend = inputs
    _, col_lse, col_argmax, row_sum, _, _, probs = output
    ctx.save_for_backward(q, k, v, col_lse, col_argmax, row_sum, probs, seed)
    ctx.options = tuple(options)
    ctx.backend = backend


def _backward(ctx, grad_out, *map_grads):
    q, k, v, col_lse, col_argmax, row_sum, probs, seed = ctx.saved_tensors
    grads = assign_attention_bwd(
        grad_out.contiguous(), q, k, v, col_lse, col_argmax, row_sum, probs, seed, *ctx.options, ctx.backend
    )
    no_grads = (None,) * (len(ctx.options) + 2)  # the seed, the options and the backend
    return (*grads, *no_grads)


assign_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def check_assign_inputs(q: Tensor, k: Tensor, v: Tensor, params: AssignParams) -> None:
    """Validate shapes, dtypes, devices and the parameters, raising ValueError/TypeError naming the argument.

    Metadata only; the values (NaN/inf) are checked when value checks are on (``checks.value_checks_enabled``)."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, tensor, 3)
    check_same_device(q=q, k=k, v=v)
    check_same_dtype(q=q, k=k, v=v)
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"batch size B: expected q, k, v to agree, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.shape[2] == k.shape[2] == v.shape[2]):
        raise ValueError(
            f"channels C: expected q, k, v to agree, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"tokens S: expected k and v to agree, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if min(q.shape) == 0 or min(k.shape) == 0:
        raise ValueError(f"q, k, v: expected non-empty tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    check_positive("tau", params.tau)
    check_non_negative("eps", params.eps)
    for name in ("sum_assign", "return_maps"):
        if not isinstance(getattr(params, name), bool):
            raise TypeError(f"{name}: expected a bool, got {type(getattr(params, name)).__name__}")
    check_count("noise_batch_offset", params.noise_batch_offset, 0)
    check_count("noise_batch_stride", params.noise_batch_stride, 1)
    global_map = params.global_batch_size(q.shape[0]) * q.shape[1] * k.shape[1]
    if global_map >= MAX_NOISE_ELEMENTS:
        raise ValueError(
            f"q, k: the global [B, N, S] map (noise_batch_offset {params.noise_batch_offset}, "
            f"noise_batch_stride {params.noise_batch_stride}, {tuple(q.shape[:2]) + (k.shape[1],)} "
            f"locally) would have {global_map} >= 2**32 elements"
        )
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_finite(name, tensor)


def check_count(name: str, value: object, minimum: int) -> None:
    """``value`` must be an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


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
    noise_batch_offset: int = 0,
    noise_batch_stride: int = 1,
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
        return_maps: also return the hard and soft maps [B, N, S] (no gradient flows through them). The
            hard map is the one-hot the output used; the soft map is ``softmax_N(scale q k^T / tau)``
            without the noise in every mode (the authors' soft map).
        noise_batch_offset, noise_batch_stride: local clip ``b`` draws the Gumbel noise of clip
            ``noise_batch_offset + b * noise_batch_stride`` of the global batch. A data-parallel rank
            passes where its clips sit (``DistributedSampler``: rank, world size), so the ranks together
            draw the noise of one process over the global batch.
        backend: ``"auto"``, ``"reference"``, ``"cpp"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``out`` [B, N, C], or ``(out, hard_map, soft_map)`` with ``return_maps``.
    """
    check_choice("mode", mode, MODES)
    params = AssignParams(
        mode=MODES.index(mode),
        tau=tau,
        eps=eps,
        sum_assign=sum_assign,
        seed=seed or 0,
        return_maps=return_maps,
        noise_batch_offset=noise_batch_offset,
        noise_batch_stride=noise_batch_stride,
    )
    check_assign_inputs(q, k, v, params)
    if seed is None and params.mode == MODE_GUMBEL:
        seed_tensor = torch.randint(0, 2**62, (), dtype=torch.int64)  # torch's default CPU generator
    else:
        seed_keys(params.seed)  # validates the range
        seed_tensor = torch.tensor(params.seed, dtype=torch.int64)
    name = select_backend(backend, "assign_attention_forward", q.device, q.dtype, mode)
    out, _, _, _, hard_map, soft_map, _ = assign_attention_fwd(q, k, v, seed_tensor, *op_options(params), name)
    return (out, hard_map, soft_map) if return_maps else out
