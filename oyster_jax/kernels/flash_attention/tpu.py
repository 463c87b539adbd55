"""TPU (Mosaic) flash-attention kernels: forward, dq, and dk/dv.

Unlike the GPU kernels, which loop inside one program, these put the reduction over tiles on the last
grid axes ("arbitrary" semantics) and carry running statistics in VMEM scratch; Pallas pipelines the
HBM->VMEM copies of the next tile behind the current one. Tiles that the causal mask hides, or that lie
outside the segments of a tile's tokens (per-tile bounds from `Segments`, scalar-prefetched into SMEM),
are skipped twice: `pl.when` skips the compute, and the index maps clamp the tile index to the last (or
first) visited tile, so the pipeline sees an unchanged block index and issues no copy.

Everything in a kernel is 2-D, as Mosaic wants: per-row statistics are [rows, 1] columns, segment ids
of keys are [1, keys] rows. The dk/dv kernel works on transposed scores [keys, queries], so that all of
its matmuls are of the (A @ B) or (A @ B^T) forms the MXU takes directly; it therefore reads the
log-sum-exp and delta as rows [1, queries] (the same bytes as the [queries, 1] columns, reshaped).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from oyster_jax.kernels.flash_attention.common import (
    Problem,
    Segments,
    idiv,
    kv_blocks_for_q_block,
    q_blocks_for_kv_block,
    segment_tile_range,
    segment_visible,
)
from oyster_jax.kernels.masking import MASK_VALUE, causal_visible

HEAD_MAJOR = True  # q [B, N, Tp, H], k/v [B, K, Sp, H]

_NT = (((1,), (1,)), ((), ()))  # A @ B^T
_NN = (((1,), (0,)), ((), ()))  # A @ B


def _dot(a, b, dims):
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _visible(p: Problem, q_pos, k_pos, q_seg, k_seg, *, position_mask: bool):
    """bool mask of the tile's shape, or None. q_pos/k_pos are 2-D absolute indices of the tile's
    shape; q_seg/k_seg broadcast to it ([rows, 1] and [1, cols] in either orientation)."""
    mask = None
    if position_mask:
        if p.causal:
            mask = causal_visible(q_pos, k_pos, p.causal_offset)
        elif p.mask_padded_keys:
            mask = k_pos < p.kv_len
    if p.has_segments:
        same = segment_visible(p, q_seg, k_seg)
        mask = same if mask is None else mask & same
    return mask


def _needs_position_mask(p: Problem) -> bool:
    return p.causal or p.mask_padded_keys


def _interpret(p: Problem):
    return pltpu.InterpretParams() if p.interpret else False


def _params(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


def _clamp(x, lo, hi):
    return jnp.maximum(jnp.minimum(x, hi), lo)


def _visited(x, start, end):
    """x clamped into the visited range [start, end): a skipped grid step re-uses the index of a visited
    tile, so its block is not copied again (0 when nothing is visited)."""
    return _clamp(x, jnp.maximum(jnp.minimum(start, end - 1), 0), end - 1)


def _tile_bounds(p: Problem, segs: Segments | None, B: int, L: int, rows: int, block: int, side: str):
    """Flat int32 [B * tiles] (lo, hi): for each tile of `rows` queries (side "q") or keys ("k"), the
    tiles of `block` along the other axis that its tokens' segments reach; everything without segments.
    Flat, because they are scalar-prefetched into SMEM."""
    if not p.has_segments:
        return jnp.zeros((B * (L // rows),), jnp.int32), jnp.full((B * (L // rows),), 1 << 30, jnp.int32)
    ids = segs.q if side == "q" else segs.k
    first, last = (segs.q_first, segs.q_last) if side == "q" else (segs.k_first, segs.k_last)
    shape = (B, L // rows, rows)
    lo, hi = segment_tile_range(p, ids.reshape(shape), first.reshape(shape), last.reshape(shape), block, axis=-1)
    return lo.reshape(-1), hi.reshape(-1)


def _key_range(p: Problem, b, i, bq: int, bk: int, nq: int, lo_ref, hi_ref):
    """(start, full_end, end): query tile i of row b visits key tiles [start, full_end) without a position
    mask and [max(start, full_end), end) with one."""
    full_end, end = kv_blocks_for_q_block(p, i, bq, bk)
    end = jnp.minimum(end, hi_ref[b * nq + i])
    return jnp.minimum(lo_ref[b * nq + i], end), jnp.minimum(full_end, end), end


def _query_range(p: Problem, b, j, bq: int, bk: int, nk: int, lo_ref, hi_ref):
    """(start, full_start, end): key tile j of row b visits query tiles [start, min(full_start, end)) with a
    position mask and [max(full_start, start), end) without."""
    start, full_start, end = q_blocks_for_kv_block(p, j, bq, bk)
    end = jnp.minimum(end, hi_ref[b * nk + j])
    return jnp.minimum(jnp.maximum(start, lo_ref[b * nk + j]), end), full_start, end


# ----------------------------------------------------------------------------------------------------
# Forward: grid (B, N, q tiles, k tiles), reduction over k tiles.
# ----------------------------------------------------------------------------------------------------


def _fwd_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, *refs, p: Problem, bq: int, bk: int):
    if p.has_segments:
        q_seg_ref, k_seg_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    else:
        o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    nq, nk = pl.num_programs(2), pl.num_programs(3)

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, MASK_VALUE, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    def tile(position_mask: bool):
        q = q_ref[...]  # [bq, H]
        s = _dot(q, k_ref[...], _NT) * p.sm_scale  # [bq, bk]
        q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
        k_pos = j * bk + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
        segs = (q_seg_ref[...], k_seg_ref[...]) if p.has_segments else (None, None)
        mask = _visible(p, q_pos, k_pos, *segs, position_mask=position_mask)
        if mask is not None:
            s = jnp.where(mask, s, MASK_VALUE)
        m_prev = m_scr[...]  # [bq, 1]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        m_pt = jnp.where(m_new == MASK_VALUE, 0.0, m_new)  # a row with nothing visible yet stays at 0
        probs = jnp.exp(s - m_pt)
        rescale = jnp.exp(m_prev - m_pt)
        l_scr[...] = l_scr[...] * rescale + jnp.sum(probs, axis=1, keepdims=True)
        v = v_ref[...]
        acc_scr[...] = acc_scr[...] * rescale + _dot(probs.astype(v.dtype), v, _NN)
        m_scr[...] = m_new

    start, full_end, end = _key_range(p, b, i, bq, bk, nq, lo_ref, hi_ref)
    pl.when((j >= start) & (j < full_end))(lambda: tile(False))
    if _needs_position_mask(p):
        pl.when((j >= jnp.maximum(start, full_end)) & (j < end))(lambda: tile(True))

    @pl.when(j == nk - 1)
    def _finish():
        l = l_scr[...]
        empty = l == 0.0
        o_ref[...] = (acc_scr[...] / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, jnp.inf, m_scr[...] + jnp.log(jnp.where(empty, 1.0, l)))


def forward(p: Problem, q, k, v, segs: Segments | None):
    """q [B, N, Tp, H], k/v [B, K, Sp, H], segs [B, Tp]/[B, Sp] -> (o [B, N, Tp, H], lse [B, N, Tp])."""
    bq, bk = p.blocks.fwd_q, p.blocks.fwd_k
    B, N, Tp, H = q.shape
    Sp, G = p.kv_len_padded, p.group
    nq, nk = Tp // bq, Sp // bk

    def kv_tile(b, i, j, lo_ref, hi_ref):
        start, _, end = _key_range(p, b, i, bq, bk, nq, lo_ref, hi_ref)
        return _visited(j, start, end)

    in_specs = [
        pl.BlockSpec((None, None, bq, H), lambda b, n, i, j, *_: (b, n, i, 0)),
        pl.BlockSpec((None, None, bk, H), lambda b, n, i, j, *lh: (b, idiv(n, G), kv_tile(b, i, j, *lh), 0)),
        pl.BlockSpec((None, None, bk, H), lambda b, n, i, j, *lh: (b, idiv(n, G), kv_tile(b, i, j, *lh), 0)),
    ]
    args = [q, k, v]
    if p.has_segments:
        in_specs += [
            pl.BlockSpec((None, bq, 1), lambda b, n, i, j, *_: (b, i, 0)),
            pl.BlockSpec((None, 1, bk), lambda b, n, i, j, *lh: (b, 0, kv_tile(b, i, j, *lh))),
        ]
        args += [segs.q.reshape(B, Tp, 1), segs.k.reshape(B, 1, Sp)]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(B, N, nq, nk),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, None, bq, H), lambda b, n, i, j, *_: (b, n, i, 0)),
            pl.BlockSpec((None, None, bq, 1), lambda b, n, i, j, *_: (b, n, i, 0)),
        ],
        scratch_shapes=[
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, H), jnp.float32),
        ],
    )
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, p=p, bq=bq, bk=bk),
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct((B, N, Tp, H), q.dtype),
            jax.ShapeDtypeStruct((B, N, Tp, 1), jnp.float32),
        ],
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
        interpret=_interpret(p),
        name="oyster_flash_fwd",
    )(*_tile_bounds(p, segs, B, Tp, bq, bk, "q"), *args)
    return o, lse.reshape(B, N, Tp)


# ----------------------------------------------------------------------------------------------------
# Backward dq: grid (B, N, q tiles, k tiles), reduction over k tiles.
# ----------------------------------------------------------------------------------------------------


def _dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, p: Problem, bq: int, bk: int):
    if p.has_segments:
        q_seg_ref, k_seg_ref, dq_ref, dq_scr = refs
    else:
        dq_ref, dq_scr = refs
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    nq, nk = pl.num_programs(2), pl.num_programs(3)

    @pl.when(j == 0)
    def _init():
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)

    def tile(position_mask: bool):
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s = _dot(q, k, _NT) * p.sm_scale  # [bq, bk]
        probs = jnp.exp(s - lse_ref[...])
        q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
        k_pos = j * bk + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
        segs = (q_seg_ref[...], k_seg_ref[...]) if p.has_segments else (None, None)
        mask = _visible(p, q_pos, k_pos, *segs, position_mask=position_mask)
        if mask is not None:
            probs = jnp.where(mask, probs, 0.0)
        dp = _dot(do, v, _NT)
        ds = probs * (dp - delta_ref[...])
        dq_scr[...] += _dot(ds.astype(k.dtype), k, _NN)

    start, full_end, end = _key_range(p, b, i, bq, bk, nq, lo_ref, hi_ref)
    pl.when((j >= start) & (j < full_end))(lambda: tile(False))
    if _needs_position_mask(p):
        pl.when((j >= jnp.maximum(start, full_end)) & (j < end))(lambda: tile(True))

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (dq_scr[...] * p.sm_scale).astype(dq_ref.dtype)


def backward_dq(p: Problem, q, k, v, do, lse, delta, segs: Segments | None):
    bq, bk = p.blocks.dq_q, p.blocks.dq_k
    B, N, Tp, H = q.shape
    Sp, G = p.kv_len_padded, p.group
    nq, nk = Tp // bq, Sp // bk

    def kv_tile(b, i, j, lo_ref, hi_ref):
        start, _, end = _key_range(p, b, i, bq, bk, nq, lo_ref, hi_ref)
        return _visited(j, start, end)

    q_spec = pl.BlockSpec((None, None, bq, H), lambda b, n, i, j, *_: (b, n, i, 0))
    kv_spec = pl.BlockSpec((None, None, bk, H), lambda b, n, i, j, *lh: (b, idiv(n, G), kv_tile(b, i, j, *lh), 0))
    col_spec = pl.BlockSpec((None, None, bq, 1), lambda b, n, i, j, *_: (b, n, i, 0))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, col_spec, col_spec]
    args = [q, k, v, do, lse.reshape(B, N, Tp, 1), delta.reshape(B, N, Tp, 1)]
    if p.has_segments:
        in_specs += [
            pl.BlockSpec((None, bq, 1), lambda b, n, i, j, *_: (b, i, 0)),
            pl.BlockSpec((None, 1, bk), lambda b, n, i, j, *lh: (b, 0, kv_tile(b, i, j, *lh))),
        ]
        args += [segs.q.reshape(B, Tp, 1), segs.k.reshape(B, 1, Sp)]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(B, N, nq, nk),
        in_specs=in_specs,
        out_specs=q_spec,
        scratch_shapes=[pltpu.VMEM((bq, H), jnp.float32)],
    )
    return pl.pallas_call(
        functools.partial(_dq_kernel, p=p, bq=bq, bk=bk),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((B, N, Tp, H), q.dtype),
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
        interpret=_interpret(p),
        name="oyster_flash_dq",
    )(*_tile_bounds(p, segs, B, Tp, bq, bk, "q"), *args)


# ----------------------------------------------------------------------------------------------------
# Backward dk, dv: grid (B, K, k tiles, G, q tiles); reduction over the G query heads sharing this K/V
# head and over their q tiles, so grouped heads are summed in VMEM and never materialized per head.
# ----------------------------------------------------------------------------------------------------


def _dkv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, p: Problem, bq: int, bk: int):
    if p.has_segments:
        q_seg_ref, k_seg_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
    else:
        dk_ref, dv_ref, dk_scr, dv_scr = refs
    b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
    nk, G, nq = pl.num_programs(2), pl.num_programs(3), pl.num_programs(4)

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    def tile(position_mask: bool):
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s_t = _dot(k, q, _NT) * p.sm_scale  # [bk, bq]
        probs_t = jnp.exp(s_t - lse_ref[...])  # lse row [1, bq]
        k_pos = j * bk + jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 0)
        q_pos = i * bq + jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 1)
        segs = (q_seg_ref[...], k_seg_ref[...]) if p.has_segments else (None, None)
        mask = _visible(p, q_pos, k_pos, *segs, position_mask=position_mask)
        if mask is not None:
            probs_t = jnp.where(mask, probs_t, 0.0)
        dv_scr[...] += _dot(probs_t.astype(do.dtype), do, _NN)  # [bk, H]
        dp_t = _dot(v, do, _NT)  # [bk, bq]
        ds_t = probs_t * (dp_t - delta_ref[...])
        dk_scr[...] += _dot(ds_t.astype(q.dtype), q, _NN)

    start, full_start, end = _query_range(p, b, j, bq, bk, nk, lo_ref, hi_ref)
    pl.when((i >= jnp.maximum(full_start, start)) & (i < end))(lambda: tile(False))
    if _needs_position_mask(p):
        pl.when((i >= start) & (i < jnp.minimum(full_start, end)))(lambda: tile(True))

    @pl.when((g == G - 1) & (i == nq - 1))
    def _finish():
        dk_ref[...] = (dk_scr[...] * p.sm_scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward_dkv(p: Problem, q, k, v, do, lse, delta, segs: Segments | None):
    bq, bk = p.blocks.dkv_q, p.blocks.dkv_k
    B, N, Tp, H = q.shape
    K, Sp, G = p.kv_heads, p.kv_len_padded, p.group
    nq, nk = Tp // bq, Sp // bk

    def q_tile(b, j, i, lo_ref, hi_ref):
        start, _, end = _query_range(p, b, j, bq, bk, nk, lo_ref, hi_ref)
        return _visited(i, start, end)

    q_spec = pl.BlockSpec((None, None, bq, H), lambda b, h, j, g, i, *lh: (b, h * G + g, q_tile(b, j, i, *lh), 0))
    kv_spec = pl.BlockSpec((None, None, bk, H), lambda b, h, j, g, i, *_: (b, h, j, 0))
    row_spec = pl.BlockSpec((None, None, 1, bq), lambda b, h, j, g, i, *lh: (b, h * G + g, 0, q_tile(b, j, i, *lh)))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [q, k, v, do, lse.reshape(B, N, 1, Tp), delta.reshape(B, N, 1, Tp)]
    if p.has_segments:
        in_specs += [
            pl.BlockSpec((None, 1, bq), lambda b, h, j, g, i, *lh: (b, 0, q_tile(b, j, i, *lh))),
            pl.BlockSpec((None, bk, 1), lambda b, h, j, g, i, *_: (b, j, 0)),
        ]
        args += [segs.q.reshape(B, 1, Tp), segs.k.reshape(B, Sp, 1)]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(B, K, nk, G, nq),
        in_specs=in_specs,
        out_specs=[kv_spec, kv_spec],
        scratch_shapes=[pltpu.VMEM((bk, H), jnp.float32), pltpu.VMEM((bk, H), jnp.float32)],
    )
    return pl.pallas_call(
        functools.partial(_dkv_kernel, p=p, bq=bq, bk=bk),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((B, K, Sp, H), k.dtype), jax.ShapeDtypeStruct((B, K, Sp, H), v.dtype)],
        compiler_params=_params("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        interpret=_interpret(p),
        name="oyster_flash_dkv",
    )(*_tile_bounds(p, segs, B, Sp, bk, bq, "k"), *args)
