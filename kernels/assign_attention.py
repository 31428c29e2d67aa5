"""Triton kernels for AssignAttention (softmax over the group axis N), forward and backward.

Shapes: q [B, N, C], k, v [B, S, C], maps [B, N, S]; any input strides, contiguous outputs. The
contract is :mod:`cign_fast.ops.reference` (``assign_attention_forward`` / ``_backward``), the
parameters one :class:`cign_fast.contract.AssignParams`. The forward saves ``col_lse`` [B, S],
``col_argmax`` [B, S] and ``row_sum`` [B, N]; the backward recomputes the map from them. The design
(launches, tiles, precision, noise, estimated traffic) is in ``docs/kernels.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from cign_fast.contract import (
    MIX_MUL_1,
    MIX_MUL_2,
    MODE_GUMBEL,
    MODE_HARD,
    MODE_SOFT,
    UNIFORM_OFFSET,
    UNIFORM_STEP,
    AssignParams,
)

from .utils import (
    batch_grid,
    batch_program,
    block_size,
    dot_dtype,
    exact_logits,
    on_device,
    rounded_to,
    signed_int32,
    tile_offsets,
)

NOISE_ARGS = ["key_a", "key_b", "noise_offset", "noise_stride"]  # vary per call: never specialise on their values
SOFT = tl.constexpr(MODE_SOFT)
HARD = tl.constexpr(MODE_HARD)
GUMBEL = tl.constexpr(MODE_GUMBEL)
MIX_1 = tl.constexpr(MIX_MUL_1)
MIX_2 = tl.constexpr(MIX_MUL_2)
STEP = tl.constexpr(UNIFORM_STEP)
OFFSET = tl.constexpr(UNIFORM_OFFSET)


@triton.jit
def _mix32(x):
    """The ``lowbias32`` finaliser on uint32 values (wrap-around arithmetic)."""
    x = x ^ (x >> 16)
    x = x * MIX_1
    x = x ^ (x >> 15)
    x = x * MIX_2
    return x ^ (x >> 16)


@triton.jit
def _uniform_tile(index, key_a, key_b):
    """Float32 uniforms in [2**-24, 1 - 2**-24] for uint32 element indices; keys are int32 bit patterns."""
    x = _mix32(_mix32(index ^ key_a.to(tl.uint32, bitcast=True)) ^ key_b.to(tl.uint32, bitcast=True))
    return (x >> 9).to(tl.float32) * STEP + OFFSET


@triton.jit
def _map_offsets(b, offs_n, offs_s, N, S):
    """Int64 offsets of elements [b, offs_n, offs_s] in a contiguous [B, N, S] map (``b`` is int64)."""
    return (b * N + offs_n[:, None]) * S + offs_s[None, :]


@triton.jit
def _gumbel_tile(b, offs_n, offs_s, N, S, key_a, key_b, noise_offset, noise_stride):
    """Gumbel(0, 1) noise for the map tile [offs_n, offs_s] of local batch element ``b`` (global clip
    ``noise_offset + b * noise_stride``), float32."""
    clip = noise_offset.to(tl.int64) + b * noise_stride
    u = _uniform_tile(_map_offsets(clip, offs_n, offs_s, N, S).to(tl.uint32), key_a, key_b)
    return -tl.log(-tl.log(u))


@triton.jit
def _dot(a, b, acc, DOT_DTYPE: tl.constexpr):
    """``acc + a @ b`` with float32 accumulation; operands converted to ``DOT_DTYPE`` (see ``utils.dot_dtype``)."""
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision="ieee")


@triton.jit
def _split_dot(weights, values, acc, DOT_DTYPE: tl.constexpr):
    """``acc + weights @ values`` for float32 weights and 16-bit values: the weights are split into a
    high and a low part of the values' type, two dots that keep 16 (bfloat16) or 22 (float16)
    mantissa bits of the weights instead of 8 or 11, as long as both parts are normal numbers."""
    high = weights.to(values.dtype)
    low = (weights - high.to(tl.float32)).to(values.dtype)
    return _dot(low, values, _dot(high, values, acc, DOT_DTYPE), DOT_DTYPE)


@triton.jit
def _row_scales(weights):
    """``(scale, 1 / scale)`` [rows] float32: powers of two putting each row's largest magnitude of
    ``weights`` in [2**14, 2**15) (clamped to 2**+-126; a zero row gets 2**126)."""
    row_max = tl.max(tl.abs(weights), axis=1)
    biased_exponent = ((row_max.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32)
    shift = tl.minimum(tl.maximum(141 - biased_exponent, -126), 126)
    return ((shift + 127) << 23).to(tl.float32, bitcast=True), ((127 - shift) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _weighted_dot(weights, values, acc, DOT_DTYPE: tl.constexpr):
    """``acc + weights @ values`` for float32 weights (a map tile), as accurate as float32 weights.

    Bfloat16 values: ``_split_dot`` (bfloat16 has float32's exponent range). Float16 values: each
    row of weights is first scaled by a power of two (exact) so that its largest element lies in
    [2**14, 2**15): its high part far below 65504, its low part normal, every element accurate to
    about 2**-24 of the row's largest (unscaled, |weights| > 65504 would give inf - inf and
    |weights| < 2**-3 would lose low bits, below 2**-14 high bits too, to subnormals); the tile's
    product is unscaled before it is added to ``acc``."""
    if values.dtype == tl.float32:
        acc = _dot(weights, values, acc, DOT_DTYPE)
    elif values.dtype == tl.bfloat16:
        acc = _split_dot(weights, values, acc, DOT_DTYPE)
    else:
        scale, inverse = _row_scales(weights)
        product = _split_dot(weights * scale[:, None], values, tl.zeros_like(acc), DOT_DTYPE)
        acc += product * inverse[:, None]
    return acc


@triton.jit
def _product_tile(
    a_ptr,
    a_stride_row,
    a_stride_c,
    offs_a,
    a_mask,
    b_ptr,
    b_stride_row,
    b_stride_c,
    offs_b,
    b_mask,
    C,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """``sum_c a[offs_a, c] * b[offs_b, c]`` as a float32 [BLOCK_A, BLOCK_B] tile; masked rows give 0."""
    acc = tl.zeros([BLOCK_A, BLOCK_B], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_mask = offs_c < C
        a = tl.load(
            a_ptr + tile_offsets(offs_a, a_stride_row, offs_c, a_stride_c),
            mask=a_mask[:, None] & c_mask[None, :],
            other=0.0,
        )
        b_t = tl.load(
            b_ptr + tile_offsets(offs_c, b_stride_c, offs_b, b_stride_row),
            mask=c_mask[:, None] & b_mask[None, :],
            other=0.0,
        )
        acc = _dot(a, b_t, acc, DOT_DTYPE)
    return acc


@triton.jit
def _logits_tile(
    q_ptr,
    q_stride_n,
    q_stride_c,
    k_ptr,
    k_stride_s,
    k_stride_c,
    b,
    offs_n,
    n_mask,
    offs_s,
    s_mask,
    N,
    S,
    C,
    scale,
    tau,
    key_a,
    key_b,
    noise_offset,
    noise_stride,
    MODE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """``(scale q k^T + g) / tau`` for one [BLOCK_N, BLOCK_S] tile, float32, rounded as the reference rounds it
    (``utils.exact_logits``); rows past N are -inf.

    ``q_ptr``/``k_ptr`` point at batch element ``b``; columns past S are finite (they hold noise only)."""
    product = _product_tile(
        q_ptr,
        q_stride_n,
        q_stride_c,
        offs_n,
        n_mask,
        k_ptr,
        k_stride_s,
        k_stride_c,
        offs_s,
        s_mask,
        C,
        BLOCK_N,
        BLOCK_S,
        BLOCK_C,
        DOT_DTYPE,
    )
    noise = 0.0
    if MODE == GUMBEL:
        noise = _gumbel_tile(b, offs_n, offs_s, N, S, key_a, key_b, noise_offset, noise_stride)
    logits = exact_logits(product, scale, noise, tau, MODE == GUMBEL)
    return tl.where(n_mask[:, None], logits, float("-inf"))


@triton.jit
def _soft_tile(
    q_ptr,
    q_stride_n,
    q_stride_c,
    k_ptr,
    k_stride_s,
    k_stride_c,
    lse_ptr,
    b,
    offs_n,
    n_mask,
    offs_s,
    s_mask,
    N,
    S,
    C,
    scale,
    tau,
    key_a,
    key_b,
    noise_offset,
    noise_stride,
    MODE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """The soft map tile y = exp(logits - col_lse), float32, recomputed from q, k (``_logits_tile``); 0 off the map."""
    logits = _logits_tile(
        q_ptr,
        q_stride_n,
        q_stride_c,
        k_ptr,
        k_stride_s,
        k_stride_c,
        b,
        offs_n,
        n_mask,
        offs_s,
        s_mask,
        N,
        S,
        C,
        scale,
        tau,
        key_a,
        key_b,
        noise_offset,
        noise_stride,
        MODE,
        BLOCK_N,
        BLOCK_S,
        BLOCK_C,
        DOT_DTYPE,
    )
    col_lse = tl.load(lse_ptr + b * S + offs_s, mask=s_mask, other=0.0)
    return tl.where(n_mask[:, None] & s_mask[None, :], tl.exp(logits - col_lse[None, :]), 0.0)


@triton.jit
def _hard_tile(argmax_ptr, b, offs_n, offs_s, valid, S):
    """The one-hot map tile (float32): 1 where row ``i`` is column ``s``'s argmax, 0 elsewhere and off the map."""
    col_argmax = tl.load(argmax_ptr + b * S + offs_s, mask=offs_s < S, other=-1)
    return tl.where(valid & (offs_n[:, None] == col_argmax[None, :]), 1.0, 0.0)


@triton.jit(do_not_specialize=NOISE_ARGS)
def _gumbel_noise_kernel(
    out_ptr, N, S, key_a, key_b, noise_offset, noise_stride, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr
):
    """Grid ``batch_grid(B, cdiv(N, BLOCK_N), cdiv(S, BLOCK_S))``: the noise map [B, N, S], float32, contiguous."""
    s_tiles = tl.cdiv(S, BLOCK_S)
    b, tile = batch_program(tl.cdiv(N, BLOCK_N) * s_tiles)
    offs_n = (tile // s_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_s = (tile % s_tiles) * BLOCK_S + tl.arange(0, BLOCK_S)
    valid = (offs_n[:, None] < N) & (offs_s[None, :] < S)
    noise = _gumbel_tile(b, offs_n, offs_s, N, S, key_a, key_b, noise_offset, noise_stride)
    tl.store(out_ptr + _map_offsets(b, offs_n, offs_s, N, S), noise, mask=valid)


@triton.jit
def _online_column_sum(logits, col_max, col_sum):
    """One N-block of the online log-sum-exp over groups: the updated ``(col_max, col_sum)`` [BLOCK_S]."""
    new_max = tl.maximum(col_max, tl.max(logits, axis=0))
    return new_max, col_sum * tl.exp(col_max - new_max) + tl.sum(tl.exp(logits - new_max[None, :]), axis=0)


@triton.jit(do_not_specialize=NOISE_ARGS)
def _column_stats_kernel(
    q_ptr,
    k_ptr,
    lse_ptr,
    argmax_ptr,
    clean_lse_ptr,
    q_stride_b,
    q_stride_n,
    q_stride_c,
    k_stride_b,
    k_stride_s,
    k_stride_c,
    N,
    S,
    C,
    scale,
    tau,
    key_a,
    key_b,
    noise_offset,
    noise_stride,
    MODE: tl.constexpr,
    CLEAN_LSE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Grid ``batch_grid(B, cdiv(S, BLOCK_S))``: col_lse [B, S] and first-index col_argmax [B, S] over all N;
    with ``CLEAN_LSE`` also the log-sum-exp of the logits without noise [B, S] (for the clean soft map)."""
    b, s_tile = batch_program(tl.cdiv(S, BLOCK_S))
    offs_s = s_tile * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = offs_s < S
    q_ptr += b * q_stride_b
    k_ptr += b * k_stride_b
    col_max = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    col_sum = tl.zeros([BLOCK_S], dtype=tl.float32)
    col_argmax = tl.zeros([BLOCK_S], dtype=tl.int32)
    clean_max = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    clean_sum = tl.zeros([BLOCK_S], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        logits = _logits_tile(
            q_ptr,
            q_stride_n,
            q_stride_c,
            k_ptr,
            k_stride_s,
            k_stride_c,
            b,
            offs_n,
            offs_n < N,
            offs_s,
            s_mask,
            N,
            S,
            C,
            scale,
            tau,
            key_a,
            key_b,
            noise_offset,
            noise_stride,
            MODE,
            BLOCK_N,
            BLOCK_S,
            BLOCK_C,
            DOT_DTYPE,
        )
        block_argmax = tl.argmax(logits, axis=0).to(tl.int32) + n0
        col_argmax = tl.where(tl.max(logits, axis=0) > col_max, block_argmax, col_argmax)  # ties keep the earlier row
        col_max, col_sum = _online_column_sum(logits, col_max, col_sum)
        if CLEAN_LSE:
            clean = _logits_tile(
                q_ptr,
                q_stride_n,
                q_stride_c,
                k_ptr,
                k_stride_s,
                k_stride_c,
                b,
                offs_n,
                offs_n < N,
                offs_s,
                s_mask,
                N,
                S,
                C,
                scale,
                tau,
                key_a,
                key_b,
                noise_offset,
                noise_stride,
                HARD,
                BLOCK_N,
                BLOCK_S,
                BLOCK_C,
                DOT_DTYPE,
            )
            clean_max, clean_sum = _online_column_sum(clean, clean_max, clean_sum)
    tl.store(lse_ptr + b * S + offs_s, col_max + tl.log(col_sum), mask=s_mask)
    tl.store(argmax_ptr + b * S + offs_s, col_argmax, mask=s_mask)
    if CLEAN_LSE:
        tl.store(clean_lse_ptr + b * S + offs_s, clean_max + tl.log(clean_sum), mask=s_mask)


@triton.jit(do_not_specialize=NOISE_ARGS)
def _assign_output_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    lse_ptr,
    argmax_ptr,
    clean_lse_ptr,
    out_ptr,
    row_sum_ptr,
    hard_ptr,
    soft_ptr,
    q_stride_b,
    q_stride_n,
    q_stride_c,
    k_stride_b,
    k_stride_s,
    k_stride_c,
    v_stride_b,
    v_stride_s,
    v_stride_c,
    N,
    S,
    C,
    scale,
    tau,
    eps,
    key_a,
    key_b,
    noise_offset,
    noise_stride,
    MODE: tl.constexpr,
    SUM_ASSIGN: tl.constexpr,
    RETURN_MAPS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_CV: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Grid ``batch_grid(B, cdiv(C, BLOCK_CV), cdiv(N, BLOCK_N))``: out [B, N, C] (contiguous), row_sum [B, N]
    and the maps (the latter two from the first C-slice; in gumbel mode the soft map is the softmax without
    noise, from ``clean_lse``)."""
    n_tiles = tl.cdiv(N, BLOCK_N)
    b, tile = batch_program(tl.cdiv(C, BLOCK_CV) * n_tiles)
    first_slice = tile < n_tiles
    offs_n = (tile % n_tiles) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_cv = (tile // n_tiles) * BLOCK_CV + tl.arange(0, BLOCK_CV)
    n_mask = offs_n < N
    cv_mask = offs_cv < C
    q_ptr += b * q_stride_b
    k_ptr += b * k_stride_b
    v_ptr += b * v_stride_b
    acc = tl.zeros([BLOCK_N, BLOCK_CV], dtype=tl.float32)
    row_total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_mask = offs_s < S
        valid = n_mask[:, None] & s_mask[None, :]
        hard = _hard_tile(argmax_ptr, b, offs_n, offs_s, valid, S)
        v_tile = tl.load(
            v_ptr + tile_offsets(offs_s, v_stride_s, offs_cv, v_stride_c),
            mask=s_mask[:, None] & cv_mask[None, :],
            other=0.0,
        )
        if MODE == SOFT:
            soft = _soft_tile(
                q_ptr,
                q_stride_n,
                q_stride_c,
                k_ptr,
                k_stride_s,
                k_stride_c,
                lse_ptr,
                b,
                offs_n,
                n_mask,
                offs_s,
                s_mask,
                N,
                S,
                C,
                scale,
                tau,
                key_a,
                key_b,
                noise_offset,
                noise_stride,
                MODE,
                BLOCK_N,
                BLOCK_S,
                BLOCK_C,
                DOT_DTYPE,
            )
            row_total += tl.sum(soft, axis=1)
            acc = _weighted_dot(soft, v_tile, acc, DOT_DTYPE)
        else:  # a one-hot tile is exact in any type: one dot
            row_total += tl.sum(hard, axis=1)
            acc = _dot(hard.to(v_tile.dtype), v_tile, acc, DOT_DTYPE)
        if RETURN_MAPS:
            if first_slice:  # only the first C-slice stores the maps; hard modes recompute y only there
                if MODE == HARD:
                    soft = _soft_tile(
                        q_ptr,
                        q_stride_n,
                        q_stride_c,
                        k_ptr,
                        k_stride_s,
                        k_stride_c,
                        lse_ptr,
                        b,
                        offs_n,
                        n_mask,
                        offs_s,
                        s_mask,
                        N,
                        S,
                        C,
                        scale,
                        tau,
                        key_a,
                        key_b,
                        noise_offset,
                        noise_stride,
                        HARD,
                        BLOCK_N,
                        BLOCK_S,
                        BLOCK_C,
                        DOT_DTYPE,
                    )
                elif MODE == GUMBEL:  # the soft map without the noise
                    soft = _soft_tile(
                        q_ptr,
                        q_stride_n,
                        q_stride_c,
                        k_ptr,
                        k_stride_s,
                        k_stride_c,
                        clean_lse_ptr,
                        b,
                        offs_n,
                        n_mask,
                        offs_s,
                        s_mask,
                        N,
                        S,
                        C,
                        scale,
                        tau,
                        key_a,
                        key_b,
                        noise_offset,
                        noise_stride,
                        HARD,
                        BLOCK_N,
                        BLOCK_S,
                        BLOCK_C,
                        DOT_DTYPE,
                    )
                map_offsets = _map_offsets(b, offs_n, offs_s, N, S)
                tl.store(hard_ptr + map_offsets, hard.to(hard_ptr.dtype.element_ty), mask=valid)
                tl.store(soft_ptr + map_offsets, rounded_to(soft, soft_ptr.dtype.element_ty), mask=valid)
    row_sum = row_total + eps
    if not SUM_ASSIGN:
        acc = acc / row_sum[:, None]
    out_offsets = (b * N + offs_n[:, None]) * C + offs_cv[None, :]
    tl.store(out_ptr + out_offsets, rounded_to(acc, out_ptr.dtype.element_ty), mask=n_mask[:, None] & cv_mask[None, :])
    tl.store(row_sum_ptr + b * N + offs_n, row_sum, mask=n_mask & first_slice)


@triton.jit(do_not_specialize=NOISE_ARGS)
def _backward_row_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    grad_out_ptr,
    lse_ptr,
    argmax_ptr,
    row_sum_ptr,
    soft_ptr,
    grad_map_ptr,
    row_dot_ptr,
    q_stride_b,
    q_stride_n,
    q_stride_c,
    k_stride_b,
    k_stride_s,
    k_stride_c,
    v_stride_b,
    v_stride_s,
    v_stride_c,
    g_stride_b,
    g_stride_n,
    g_stride_c,
    N,
    S,
    C,
    scale,
    tau,
    key_a,
    key_b,
    noise_offset,
    noise_stride,
    MODE: tl.constexpr,
    SUM_ASSIGN: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Grid ``batch_grid(B, cdiv(N, BLOCK_N))``: y -> soft map, dA_n = dout v^T -> grad map,
    rowdot = sum_s A_n dA_n [B, N]."""
    b, n_tile = batch_program(tl.cdiv(N, BLOCK_N))
    offs_n = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    q_ptr += b * q_stride_b
    k_ptr += b * k_stride_b
    v_ptr += b * v_stride_b
    grad_out_ptr += b * g_stride_b
    row_dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_mask = offs_s < S
        valid = n_mask[:, None] & s_mask[None, :]
        soft = _soft_tile(
            q_ptr,
            q_stride_n,
            q_stride_c,
            k_ptr,
            k_stride_s,
            k_stride_c,
            lse_ptr,
            b,
            offs_n,
            n_mask,
            offs_s,
            s_mask,
            N,
            S,
            C,
            scale,
            tau,
            key_a,
            key_b,
            noise_offset,
            noise_stride,
            MODE,
            BLOCK_N,
            BLOCK_S,
            BLOCK_C,
            DOT_DTYPE,
        )
        grad_assign_n = _product_tile(
            grad_out_ptr,
            g_stride_n,
            g_stride_c,
            offs_n,
            n_mask,
            v_ptr,
            v_stride_s,
            v_stride_c,
            offs_s,
            s_mask,
            C,
            BLOCK_N,
            BLOCK_S,
            BLOCK_C,
            DOT_DTYPE,
        )
        map_offsets = _map_offsets(b, offs_n, offs_s, N, S)
        tl.store(soft_ptr + map_offsets, soft, mask=valid)
        tl.store(grad_map_ptr + map_offsets, grad_assign_n, mask=valid)
        if not SUM_ASSIGN:
            if MODE == SOFT:
                assign = soft
            else:
                assign = _hard_tile(argmax_ptr, b, offs_n, offs_s, valid, S)
            row_dot += tl.sum(assign * grad_assign_n, axis=1)
    if not SUM_ASSIGN:
        row_sum = tl.load(row_sum_ptr + b * N + offs_n, mask=n_mask, other=1.0)
        tl.store(row_dot_ptr + b * N + offs_n, row_dot / row_sum, mask=n_mask)


@triton.jit
def _assign_grad_tile(
    soft_ptr, grad_map_ptr, row_sum_ptr, row_dot_ptr, b, offs_n, offs_s, valid, N, S, SUM_ASSIGN: tl.constexpr
):
    """Loads (y, dA, row_sum) for a tile: dA = (dA_n - rowdot) / r, or dA_n with ``sum_assign``."""
    map_offsets = _map_offsets(b, offs_n, offs_s, N, S)
    soft = tl.load(soft_ptr + map_offsets, mask=valid, other=0.0)
    grad_assign = tl.load(grad_map_ptr + map_offsets, mask=valid, other=0.0)
    row_sum = tl.load(row_sum_ptr + b * N + offs_n, mask=offs_n < N, other=1.0)
    if not SUM_ASSIGN:
        row_dot = tl.load(row_dot_ptr + b * N + offs_n, mask=offs_n < N, other=0.0)
        grad_assign = (grad_assign - row_dot[:, None]) / row_sum[:, None]
    return soft, grad_assign, row_sum


@triton.jit
def _backward_column_kernel(
    soft_ptr,
    grad_map_ptr,
    argmax_ptr,
    row_sum_ptr,
    row_dot_ptr,
    N,
    S,
    tau,
    MODE: tl.constexpr,
    SUM_ASSIGN: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Grid ``batch_grid(B, cdiv(S, BLOCK_S))``: overwrites the grad map with dz and the soft map with A_n
    (in place)."""
    b, s_tile = batch_program(tl.cdiv(S, BLOCK_S))
    offs_s = s_tile * BLOCK_S + tl.arange(0, BLOCK_S)
    s_mask = offs_s < S
    col_dot = tl.zeros([BLOCK_S], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = (offs_n[:, None] < N) & s_mask[None, :]
        soft, grad_assign, _ = _assign_grad_tile(
            soft_ptr, grad_map_ptr, row_sum_ptr, row_dot_ptr, b, offs_n, offs_s, valid, N, S, SUM_ASSIGN
        )
        col_dot += tl.sum(soft * grad_assign, axis=0)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        valid = (offs_n[:, None] < N) & s_mask[None, :]
        soft, grad_assign, row_sum = _assign_grad_tile(
            soft_ptr, grad_map_ptr, row_sum_ptr, row_dot_ptr, b, offs_n, offs_s, valid, N, S, SUM_ASSIGN
        )
        grad_logits = soft * (grad_assign - col_dot[None, :]) / tau
        if MODE == SOFT:
            assign = soft
        else:
            assign = _hard_tile(argmax_ptr, b, offs_n, offs_s, valid, S)
        if not SUM_ASSIGN:
            assign = assign / row_sum[:, None]
        map_offsets = _map_offsets(b, offs_n, offs_s, N, S)
        tl.store(grad_map_ptr + map_offsets, grad_logits, mask=valid)
        tl.store(soft_ptr + map_offsets, assign, mask=valid)


@triton.jit
def _map_product_kernel(
    map_ptr,
    mat_ptr,
    out_ptr,
    map_stride_b,
    map_stride_m,
    map_stride_t,
    mat_stride_b,
    mat_stride_t,
    mat_stride_c,
    M,
    T,
    C,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Grid ``batch_grid(B, cdiv(C, BLOCK_C), cdiv(M, BLOCK_M))``:
    out[b, m, c] = scale * sum_t map[b, m, t] mat[b, t, c].

    ``map`` is float32 (see ``_weighted_dot``), ``out`` [B, M, C] contiguous."""
    m_tiles = tl.cdiv(M, BLOCK_M)
    b, tile = batch_program(tl.cdiv(C, BLOCK_C) * m_tiles)
    offs_m = (tile % m_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = (tile // m_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_mask = offs_m < M
    c_mask = offs_c < C
    map_ptr += b * map_stride_b
    mat_ptr += b * mat_stride_b
    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        weights = tl.load(
            map_ptr + tile_offsets(offs_m, map_stride_m, offs_t, map_stride_t),
            mask=m_mask[:, None] & t_mask[None, :],
            other=0.0,
        )
        values = tl.load(
            mat_ptr + tile_offsets(offs_t, mat_stride_t, offs_c, mat_stride_c),
            mask=t_mask[:, None] & c_mask[None, :],
            other=0.0,
        )
        acc = _weighted_dot(weights, values, acc, DOT_DTYPE)
    out_offsets = (b * M + offs_m[:, None]) * C + offs_c[None, :]
    tl.store(
        out_ptr + out_offsets, rounded_to(scale * acc, out_ptr.dtype.element_ty), mask=m_mask[:, None] & c_mask[None, :]
    )


def _noise_args(params: AssignParams) -> tuple[int, int, int, int]:
    """``(key_a, key_b, noise_offset, noise_stride)`` for the kernels, the keys as int32 bit patterns (zeros
    when the mode has no noise)."""
    key_a, key_b = params.noise_keys()
    return signed_int32(key_a), signed_int32(key_b), params.noise_batch_offset, params.noise_batch_stride


def gumbel_noise(
    shape: tuple[int, int, int], seed: int, device: torch.device | str, batch_offset: int = 0, batch_stride: int = 1
) -> torch.Tensor:
    """Float32 Gumbel noise [B, N, S] computed by a Triton kernel (the values of ``ops.gumbel.gumbel_noise``)."""
    batch, groups, tokens = shape
    out = torch.empty(shape, dtype=torch.float32, device=device)
    params = AssignParams(mode=MODE_GUMBEL, seed=seed, noise_batch_offset=batch_offset, noise_batch_stride=batch_stride)
    block_n, block_s = block_size(groups, 32), block_size(tokens, 64)
    with on_device(out):
        _gumbel_noise_kernel[batch_grid(batch, triton.cdiv(groups, block_n), triton.cdiv(tokens, block_s))](
            out,
            groups,
            tokens,
            *_noise_args(params),
            BLOCK_N=block_n,
            BLOCK_S=block_s,
        )
    return out


class TileSizes(NamedTuple):
    """Block sizes of the assign-attention kernels (powers of two >= 16 so that tl.dot accepts them)."""

    groups: int  # BLOCK_N
    tokens: int  # BLOCK_S
    channels: int  # BLOCK_C: the reduction chunk of q k^T and dout v^T
    out_channels: int  # BLOCK_CV / the map products' BLOCK_C: the output slice of A @ v, dz @ k, ...
    warps: int  # num_warps: 8 for full 64-row tiles, 4 (one warpgroup) for smaller ones


def tile_sizes(dtype: torch.dtype, groups: int, tokens: int, channels: int) -> TileSizes:
    """Tiles for ``dtype`` inputs. Float32 runs IEEE dots on the FMA units with register operands, so
    its tiles are halved; 16-bit tiles feed the tensor cores (wgmma for 64-row tiles on sm_90)."""
    wide = dtype == torch.float32
    rows = block_size(groups, 64)
    return TileSizes(
        groups=rows,
        tokens=block_size(tokens, 32 if wide else 64),
        channels=block_size(channels, 32 if wide else 64),
        out_channels=block_size(channels, 64 if wide else 128),
        warps=8 if rows == 64 else 4,
    )


def assign_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: AssignParams,
) -> tuple[torch.Tensor, ...]:
    """``(out [B,N,C], col_lse [B,S] f32, col_argmax [B,S] i32, row_sum [B,N] f32, hard_map, soft_map)``;
    the maps are [B, N, S] in q's dtype with ``return_maps``, else empty. See ``reference.assign_attention_forward``."""
    batch, groups, channels = q.shape
    tokens = k.shape[1]
    scale = channels**-0.5
    tiles = tile_sizes(q.dtype, groups, tokens, channels)
    col_lse = torch.empty((batch, tokens), dtype=torch.float32, device=q.device)
    col_argmax = torch.empty((batch, tokens), dtype=torch.int32, device=q.device)
    row_sum = torch.empty((batch, groups), dtype=torch.float32, device=q.device)
    out = torch.empty((batch, groups, channels), dtype=q.dtype, device=q.device)
    map_shape = (batch, groups, tokens) if params.return_maps else (0,)
    hard_map, soft_map = q.new_empty(map_shape), q.new_empty(map_shape)
    clean_lse = torch.empty(
        (batch, tokens) if params.return_maps and params.noisy else (0,), dtype=torch.float32, device=q.device
    )
    noise = _noise_args(params)
    blocks = dict(BLOCK_N=tiles.groups, BLOCK_S=tiles.tokens, BLOCK_C=tiles.channels, DOT_DTYPE=dot_dtype(q.dtype))
    output_grid = batch_grid(batch, triton.cdiv(channels, tiles.out_channels), triton.cdiv(groups, tiles.groups))
    with on_device(q):
        _column_stats_kernel[batch_grid(batch, triton.cdiv(tokens, tiles.tokens))](
            q,
            k,
            col_lse,
            col_argmax,
            clean_lse,
            *q.stride(),
            *k.stride(),
            groups,
            tokens,
            channels,
            scale,
            params.tau,
            *noise,
            MODE=params.mode,
            CLEAN_LSE=clean_lse.numel() > 0,
            **blocks,
            num_warps=tiles.warps,
        )
        _assign_output_kernel[output_grid](
            q,
            k,
            v,
            col_lse,
            col_argmax,
            clean_lse,
            out,
            row_sum,
            hard_map,
            soft_map,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            groups,
            tokens,
            channels,
            scale,
            params.tau,
            params.eps,
            *noise,
            MODE=params.mode,
            SUM_ASSIGN=params.sum_assign,
            RETURN_MAPS=params.return_maps,
            BLOCK_CV=tiles.out_channels,
            **blocks,
            num_warps=tiles.warps,
        )
    return out, col_lse, col_argmax, row_sum, hard_map, soft_map


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
    """``(grad_q [B,N,C], grad_k [B,S,C], grad_v [B,S,C])`` in the inputs' dtype, recomputing the map from
    ``q, k`` and the saved column statistics (``eps`` is already inside ``row_sum``)."""
    batch, groups, channels = q.shape
    tokens = k.shape[1]
    scale = channels**-0.5
    tiles = tile_sizes(q.dtype, groups, tokens, channels)
    col_lse, col_argmax, row_sum = col_lse.contiguous(), col_argmax.contiguous(), row_sum.contiguous()
    soft_map = torch.empty((batch, groups, tokens), dtype=torch.float32, device=q.device)
    grad_map = torch.empty_like(soft_map)
    row_dot = torch.empty((batch, groups), dtype=torch.float32, device=q.device)
    modes = dict(MODE=params.mode, SUM_ASSIGN=params.sum_assign, BLOCK_N=tiles.groups, BLOCK_S=tiles.tokens)
    with on_device(q):
        _backward_row_kernel[batch_grid(batch, triton.cdiv(groups, tiles.groups))](
            q,
            k,
            v,
            grad_out,
            col_lse,
            col_argmax,
            row_sum,
            soft_map,
            grad_map,
            row_dot,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *grad_out.stride(),
            groups,
            tokens,
            channels,
            scale,
            params.tau,
            *_noise_args(params),
            **modes,
            BLOCK_C=tiles.channels,
            DOT_DTYPE=dot_dtype(q.dtype),
            num_warps=tiles.warps,
        )
        _backward_column_kernel[batch_grid(batch, triton.cdiv(tokens, tiles.tokens))](
            soft_map,
            grad_map,
            col_argmax,
            row_sum,
            row_dot,
            groups,
            tokens,
            params.tau,
            **modes,
            num_warps=tiles.warps,
        )
        grad_q = _map_product(grad_map, k, scale, tiles)
        grad_k = _map_product(grad_map.transpose(1, 2), q, scale, tiles)
        grad_v = _map_product(soft_map.transpose(1, 2), grad_out, 1.0, tiles)
    return grad_q, grad_k, grad_v


def _map_product(weights: torch.Tensor, values: torch.Tensor, scale: float, tiles: TileSizes) -> torch.Tensor:
    """``scale * weights @ values`` per batch element: weights [B, M, T] float32 (any strides), values [B, T, C]."""
    batch, rows, inner = weights.shape
    channels = values.shape[2]
    out = torch.empty((batch, rows, channels), dtype=values.dtype, device=values.device)
    block_m, block_t = block_size(rows, 64), block_size(inner, 32)
    _map_product_kernel[batch_grid(batch, triton.cdiv(channels, tiles.out_channels), triton.cdiv(rows, block_m))](
        weights,
        values,
        out,
        *weights.stride(),
        *values.stride(),
        rows,
        inner,
        channels,
        scale,
        BLOCK_M=block_m,
        BLOCK_T=block_t,
        BLOCK_C=tiles.out_channels,
        DOT_DTYPE=dot_dtype(values.dtype),
        num_warps=8 if block_m == 64 else 4,
    )
    return out
