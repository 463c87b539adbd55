"""GPU (Triton) flash-attention kernels: forward, dq, and dk/dv.

Each program owns one output tile and walks the tiles it needs with a `fori_loop` whose bounds come
from the causal structure and, with segment ids, from the extent of the segments its tokens belong to
(`Segments.q_first` ... `k_last`), so key tiles that a query tile cannot see are never loaded: a row
packed with many short documents costs about what the documents would cost alone. The loop is split
in two: tiles entirely below the diagonal run without building a position mask, only the diagonal band
pays for it. Whole K/V (forward, dq) or Q/dO (dk/dv) rows of one head stay in global memory and are
sliced inside the loop; grouped query heads index their K/V head in the BlockSpec, so K/V are never
repeated. Logits are kept in base 2 (exp2 is the native instruction); the saved log-sum-exp is natural.

Layout: the public sequence-major one, q/o [B, Tp, N, H] and k/v [B, Sp, K, H]; a tile is bq rows of
one head, each row H contiguous elements, so no transposes are needed around the kernels.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

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

HEAD_MAJOR = False

# The dk/dv grid has one program per (key tile, K/V head); with grouped heads that is G times fewer
# programs than the forward has. When that would leave SMs idle (fewer than ~2 waves on an H100/H200
# with 132 SMs), the G query heads of a group are split across programs, each writing float32 partial
# dk/dv that are summed afterwards.
MIN_DKV_PROGRAMS = 264

LOG2_E = math.log2(math.e)
LN_2 = math.log(2.0)


def _precision(dtype):
    # float32 inputs must not silently drop to TF32 on Ampere/Hopper: the tests hold them to 1e-5.
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _dot(a, b, *, trans_a=False, trans_b=False):
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=_precision(a.dtype))


def _visible(p: Problem, q_pos, k_pos, q_seg, k_seg, *, position_mask: bool):
    """bool [bq, bk] (or None when everything is visible). q_pos/k_pos are [bq]/[bk] absolute indices."""
    mask = None
    if position_mask:
        if p.causal:
            mask = causal_visible(q_pos[:, None], k_pos[None, :], p.causal_offset)
        elif p.mask_padded_keys:
            mask = k_pos[None, :] < p.kv_len  # [1, bk], broadcast by the select
    if p.has_segments:
        same = segment_visible(p, q_seg[:, None], k_seg[None, :])
        mask = same if mask is None else mask & same
    return mask


def launch_config(p: Problem, kernel: str) -> tuple[int, int]:
    """(num_warps, num_stages) of `kernel` ("fwd" | "dq" | "dkv"): by head size, unless p.tuning overrides."""
    big_head = p.padded_head_dim > 64
    warps = {"fwd": 8 if big_head else 4, "dq": 8 if big_head else 4, "dkv": 8 if big_head else 4}[kernel]
    stages = {"fwd": 3, "dq": 2, "dkv": 2}[kernel]
    if p.tuning is not None:  # the benchmark's --tune search; None entries keep the choice above
        tuned_warps, tuned_stages = p.tuning.launch(kernel)
        warps = warps if tuned_warps is None else tuned_warps
        stages = stages if tuned_stages is None else tuned_stages
    return warps, stages


def key_tiles(p: Problem, i, bq: int, bk: int, q_seg=None, q_first=None, q_last=None):
    """(start, full_end, end) for query tile i: key tiles [start, full_end) are visited without a position
    mask, [max(start, full_end), end) with one. The causal range, narrowed (with segments) to the keys that
    the segments of the tile's tokens span; q_seg/q_first/q_last are the tile's [bq] ids and extents."""
    full_end, end = kv_blocks_for_q_block(p, i, bq, bk)
    if not p.has_segments:
        return 0, full_end, end
    lo, hi = segment_tile_range(p, q_seg, q_first, q_last, bk)
    end = jnp.minimum(end, hi)
    return jnp.minimum(lo, end), jnp.minimum(full_end, end), end


def query_tiles(p: Problem, j, bq: int, bk: int, k_seg=None, k_first=None, k_last=None):
    """(start, full_start, end) for key tile j: query tiles [start, min(full_start, end)) are visited with a
    position mask, [max(full_start, start), end) without. The causal range, narrowed (with segments) to
    the queries that the segments of the tile's keys span."""
    start, full_start, end = q_blocks_for_kv_block(p, j, bq, bk)
    if p.has_segments:
        lo, hi = segment_tile_range(p, k_seg, k_first, k_last, bq)
        end = jnp.minimum(end, hi)
        start = jnp.minimum(jnp.maximum(start, lo), end)
    return start, full_start, end


def _compiler_params(p: Problem, kernel: str):
    if p.interpret:
        return None
    warps, stages = launch_config(p, kernel)
    return plgpu.CompilerParams(num_warps=warps, num_stages=stages)


# ----------------------------------------------------------------------------------------------------
# Forward: one program per (query tile, query head, batch row); loop over visible key tiles.
# ----------------------------------------------------------------------------------------------------


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, p: Problem, bq: int, bk: int):
    if p.has_segments:
        q_seg_ref, k_seg_ref, q_first_ref, q_last_ref, o_ref, lse_ref = refs
    else:
        o_ref, lse_ref = refs
    nq = p.q_len_padded // bq
    i = nq - 1 - pl.program_id(0)  # causal: the longest rows are scheduled first
    q = q_ref[...]  # [bq, H]
    q_pos = i * bq + jnp.arange(bq, dtype=jnp.int32)
    q_seg = q_seg_ref[...] if p.has_segments else None
    qk_scale = p.sm_scale * LOG2_E

    def tile(j, carry, position_mask):
        acc, m, l = carry  # [bq, H] f32, [bq], [bq]
        keys = pl.ds(pl.multiple_of(j * bk, bk), bk)
        k = k_ref[keys, :]
        s = _dot(q, k, trans_b=True) * qk_scale  # [bq, bk], log2 units
        k_seg = k_seg_ref[keys] if p.has_segments else None
        mask = _visible(p, q_pos, j * bk + jnp.arange(bk, dtype=jnp.int32), q_seg, k_seg, position_mask=position_mask)
        if mask is not None:
            s = jnp.where(mask, s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        m_ref_pt = jnp.where(m_new == MASK_VALUE, 0.0, m_new)  # a row with nothing visible yet stays at 0
        probs = jnp.exp2(s - m_ref_pt[:, None])
        rescale = jnp.exp2(m - m_ref_pt)
        l = l * rescale + jnp.sum(probs, axis=1)
        v = v_ref[keys, :]
        acc = acc * rescale[:, None] + _dot(probs.astype(v.dtype), v)
        return acc, m_new, l

    carry = (
        jnp.zeros((bq, p.padded_head_dim), jnp.float32),
        jnp.full((bq,), MASK_VALUE, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    extents = (q_first_ref[...], q_last_ref[...]) if p.has_segments else (None, None)
    start, full_end, end = key_tiles(p, i, bq, bk, q_seg, *extents)
    carry = jax.lax.fori_loop(start, full_end, functools.partial(tile, position_mask=False), carry)
    acc, m, l = jax.lax.fori_loop(jnp.maximum(start, full_end), end, functools.partial(tile, position_mask=True), carry)
    empty = l == 0.0
    o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, (m + jnp.log2(jnp.where(empty, 1.0, l))) * LN_2)


def _row_specs(p: Problem, bq: int, nq: int):
    """BlockSpecs over grid (query tile, query head, batch) for q-shaped, per-row and segment inputs."""
    G = p.group
    rev = lambda i: nq - 1 - i
    tile = pl.BlockSpec((None, bq, None, p.padded_head_dim), lambda i, n, b: (b, rev(i), n, 0))
    kv = pl.BlockSpec((None, p.kv_len_padded, None, p.padded_head_dim), lambda i, n, b: (b, 0, idiv(n, G), 0))
    row = pl.BlockSpec((None, None, bq), lambda i, n, b: (b, n, rev(i)))
    q_seg = pl.BlockSpec((None, bq), lambda i, n, b: (b, rev(i)))
    k_seg = pl.BlockSpec((None, p.kv_len_padded), lambda i, n, b: (b, 0))
    return tile, kv, row, q_seg, k_seg


def forward(p: Problem, q, k, v, segs: Segments | None):
    """q [B, Tp, N, H], k/v [B, Sp, K, H], segs [B, Tp]/[B, Sp] -> (o [B, Tp, N, H], lse [B, N, Tp])."""
    bq, bk = p.blocks.fwd_q, p.blocks.fwd_k
    B, Tp, N, H = q.shape
    nq = Tp // bq
    tile, kv, row, q_seg_spec, k_seg_spec = _row_specs(p, bq, nq)
    in_specs, args = [tile, kv, kv], [q, k, v]
    if p.has_segments:
        in_specs += [q_seg_spec, k_seg_spec, q_seg_spec, q_seg_spec]
        args += [segs.q, segs.k, segs.q_first, segs.q_last]
    return pl.pallas_call(
        functools.partial(_fwd_kernel, p=p, bq=bq, bk=bk),
        grid=(nq, N, B),  # consecutive programs share one head's K/V in L2
        in_specs=in_specs,
        out_specs=[tile, row],
        out_shape=[
            jax.ShapeDtypeStruct((B, Tp, N, H), q.dtype),
            jax.ShapeDtypeStruct((B, N, Tp), jnp.float32),
        ],
        interpret=p.interpret,
        compiler_params=_compiler_params(p, "fwd"),
        name="oyster_flash_fwd",
    )(*args)


# ----------------------------------------------------------------------------------------------------
# Backward dq: one program per (query tile, query head, batch row); loop over visible key tiles.
# ----------------------------------------------------------------------------------------------------


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, p: Problem, bq: int, bk: int):
    if p.has_segments:
        q_seg_ref, k_seg_ref, q_first_ref, q_last_ref, dq_ref = refs
    else:
        (dq_ref,) = refs
    nq = p.q_len_padded // bq
    i = nq - 1 - pl.program_id(0)
    q = q_ref[...]
    do = do_ref[...]
    lse2 = lse_ref[...] * LOG2_E  # [bq], base 2
    delta = delta_ref[...]  # [bq] = rowsum(dO * O)
    q_pos = i * bq + jnp.arange(bq, dtype=jnp.int32)
    q_seg = q_seg_ref[...] if p.has_segments else None
    qk_scale = p.sm_scale * LOG2_E

    def tile(j, dq, position_mask):
        keys = pl.ds(pl.multiple_of(j * bk, bk), bk)
        k = k_ref[keys, :]
        v = v_ref[keys, :]
        probs = jnp.exp2(_dot(q, k, trans_b=True) * qk_scale - lse2[:, None])  # [bq, bk]
        k_seg = k_seg_ref[keys] if p.has_segments else None
        mask = _visible(p, q_pos, j * bk + jnp.arange(bk, dtype=jnp.int32), q_seg, k_seg, position_mask=position_mask)
        if mask is not None:
            probs = jnp.where(mask, probs, 0.0)
        dp = _dot(do, v, trans_b=True)
        ds = probs * (dp - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jnp.zeros((bq, p.padded_head_dim), jnp.float32)
    extents = (q_first_ref[...], q_last_ref[...]) if p.has_segments else (None, None)
    start, full_end, end = key_tiles(p, i, bq, bk, q_seg, *extents)
    dq = jax.lax.fori_loop(start, full_end, functools.partial(tile, position_mask=False), dq)
    dq = jax.lax.fori_loop(jnp.maximum(start, full_end), end, functools.partial(tile, position_mask=True), dq)
    dq_ref[...] = (dq * p.sm_scale).astype(dq_ref.dtype)


def backward_dq(p: Problem, q, k, v, do, lse, delta, segs: Segments | None):
    bq, bk = p.blocks.dq_q, p.blocks.dq_k
    B, Tp, N, H = q.shape
    nq = Tp // bq
    tile, kv, row, q_seg_spec, k_seg_spec = _row_specs(p, bq, nq)
    in_specs, args = [tile, kv, kv, tile, row, row], [q, k, v, do, lse, delta]
    if p.has_segments:
        in_specs += [q_seg_spec, k_seg_spec, q_seg_spec, q_seg_spec]
        args += [segs.q, segs.k, segs.q_first, segs.q_last]
    return pl.pallas_call(
        functools.partial(_dq_kernel, p=p, bq=bq, bk=bk),
        grid=(nq, N, B),
        in_specs=in_specs,
        out_specs=tile,
        out_shape=jax.ShapeDtypeStruct((B, Tp, N, H), q.dtype),
        interpret=p.interpret,
        compiler_params=_compiler_params(p, "dq"),
        name="oyster_flash_dq",
    )(*args)


# ----------------------------------------------------------------------------------------------------
# Backward dk, dv: one program per (key tile, K/V head [x head split], batch row); loop over the query
# heads of the group (or of its share of the group) and over the query tiles that can see the key tile.
# ----------------------------------------------------------------------------------------------------


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, p: Problem, bq: int, bk: int, heads: int):
    if p.has_segments:
        q_seg_ref, k_seg_ref, k_first_ref, k_last_ref, dk_ref, dv_ref = refs
    else:
        dk_ref, dv_ref = refs
    j = pl.program_id(0)  # causal: low key tiles see the most query tiles and come first anyway
    k = k_ref[...]  # [bk, H]
    v = v_ref[...]
    k_pos = j * bk + jnp.arange(bk, dtype=jnp.int32)
    k_seg = k_seg_ref[...] if p.has_segments else None
    qk_scale = p.sm_scale * LOG2_E
    extents = (k_first_ref[...], k_last_ref[...]) if p.has_segments else (None, None)
    start, full_start, end = query_tiles(p, j, bq, bk, k_seg, *extents)

    def tile(i, carry, g, position_mask):
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(i * bq, bq), bq)
        q = q_ref[rows, g, :]  # [bq, H]
        do = do_ref[rows, g, :]
        lse2 = lse_ref[g, rows] * LOG2_E
        delta = delta_ref[g, rows]
        probs = jnp.exp2(_dot(q, k, trans_b=True) * qk_scale - lse2[:, None])  # [bq, bk]
        q_seg = q_seg_ref[rows] if p.has_segments else None
        mask = _visible(p, i * bq + jnp.arange(bq, dtype=jnp.int32), k_pos, q_seg, k_seg, position_mask=position_mask)
        if mask is not None:
            probs = jnp.where(mask, probs, 0.0)
        dv = dv + _dot(probs.astype(do.dtype), do, trans_a=True)  # [bk, H]
        dp = _dot(do, v, trans_b=True)  # [bq, bk]
        ds = probs * (dp - delta[:, None])
        dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    def head(g, carry):
        masked_end, unmasked_start = jnp.minimum(full_start, end), jnp.maximum(full_start, start)
        carry = jax.lax.fori_loop(start, masked_end, functools.partial(tile, g=g, position_mask=True), carry)
        return jax.lax.fori_loop(unmasked_start, end, functools.partial(tile, g=g, position_mask=False), carry)

    zeros = jnp.zeros((bk, p.padded_head_dim), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, heads, head, (zeros, zeros))
    dk_ref[...] = (dk * p.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def dkv_head_split(p: Problem, nk: int) -> int:
    """Programs per K/V head: the smallest divisor of G that gives MIN_DKV_PROGRAMS programs, else G."""
    programs = nk * p.kv_heads * p.batch
    for split in range(1, p.group + 1):
        if p.group % split == 0 and programs * split >= MIN_DKV_PROGRAMS:
            return split
    return p.group


def backward_dkv(p: Problem, q, k, v, do, lse, delta, segs: Segments | None):
    bq, bk = p.blocks.dkv_q, p.blocks.dkv_k
    B, Tp, N, H = q.shape
    K, Sp = p.kv_heads, p.kv_len_padded
    nk = Sp // bk
    split = dkv_head_split(p, nk)
    heads = p.group // split  # query heads per program
    # Grid axis 1 runs over (K/V head, share of its group) = h * split + c; the share's query heads are
    # (h * split + c) * heads .. + heads - 1, which is block h * split + c of size `heads` along N.
    kv_head = lambda hc: idiv(hc, split)
    group_rows = pl.BlockSpec((None, Tp, heads, H), lambda j, hc, b: (b, 0, hc, 0))
    kv_tile = pl.BlockSpec((None, bk, None, H), lambda j, hc, b: (b, j, kv_head(hc), 0))
    group_lse = pl.BlockSpec((None, heads, Tp), lambda j, hc, b: (b, hc, 0))
    in_specs = [group_rows, kv_tile, kv_tile, group_rows, group_lse, group_lse]
    args = [q, k, v, do, lse, delta]
    if p.has_segments:
        key_tile = pl.BlockSpec((None, bk), lambda j, hc, b: (b, j))
        in_specs += [pl.BlockSpec((None, Tp), lambda j, hc, b: (b, 0)), key_tile, key_tile, key_tile]
        args += [segs.q, segs.k, segs.k_first, segs.k_last]
    # With a split, each program writes its own float32 partial (head axis K * split), summed below.
    out_spec = pl.BlockSpec((None, bk, None, H), lambda j, hc, b: (b, j, hc, 0))
    out_dtype = (k.dtype, v.dtype) if split == 1 else (jnp.float32, jnp.float32)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, p=p, bq=bq, bk=bk, heads=heads),
        grid=(nk, K * split, B),
        in_specs=in_specs,
        out_specs=[out_spec, out_spec],
        out_shape=[jax.ShapeDtypeStruct((B, Sp, K * split, H), dt) for dt in out_dtype],
        interpret=p.interpret,
        compiler_params=_compiler_params(p, "dkv"),
        name="oyster_flash_dkv",
    )(*args)
    if split > 1:
        dk = dk.reshape(B, Sp, K, split, H).sum(axis=3).astype(k.dtype)
        dv = dv.reshape(B, Sp, K, split, H).sum(axis=3).astype(v.dtype)
    return dk, dv
