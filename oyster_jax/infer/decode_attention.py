"""Decode attention as a Pallas kernel: one new query per row against a KV cache, grouped heads, per-row
valid ranges. `decode_attention_reference` beside it is the pure-JAX definition the kernel is tested
against (tests/test_infer_decode_attention.py, interpret mode on CPU).

Row b sees cache slots [kv_start[b], kv_end) (left padding before kv_start, empty slots from kv_end on).
One program per (row, K/V head) holds the G query heads of its group as a [Gp, H] tile (G padded to a
power of two), walks only the key blocks that overlap the row's valid range with an online softmax, and
reads K/V of its head straight from the cache layout [B, S, K, H]: no repeat, no transpose.

Status: exercised in interpret mode only (this project's CI has no accelerator); `infer.generate` uses
it when asked (`decode_attention="pallas"`), XLA attention otherwise.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

__all__ = ["decode_attention", "decode_attention_reference"]

_NEG_INF = float("-inf")


def decode_attention_reference(
    q: jax.Array,  # [B, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    kv_start: jax.Array,  # [B] int32
    kv_end,  # int32 scalar or [B]
    sm_scale: float | None = None,
) -> jax.Array:  # [B, N, H]
    B, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    sm_scale = H**-0.5 if sm_scale is None else sm_scale
    qg = q.reshape(B, K, N // K, H).astype(jnp.float32)
    scores = jnp.einsum("BKGH,BSKH->BKGS", qg, k.astype(jnp.float32)) * sm_scale
    slots = jnp.arange(S)
    end = jnp.broadcast_to(jnp.asarray(kv_end), (B,))
    valid = (slots[None] >= kv_start[:, None]) & (slots[None] < end[:, None])  # [B, S]
    scores = jnp.where(valid[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("BKGS,BSKH->BKGH", probs, v.astype(jnp.float32))
    return out.reshape(B, N, H).astype(q.dtype)


def _kernel(bounds_ref, q_ref, k_ref, v_ref, o_ref, *, block_k: int, sm_scale: float):
    b = pl.program_id(0)
    start, end = bounds_ref[b, 0], bounds_ref[b, 1]
    q = q_ref[...].astype(jnp.float32) * sm_scale  # [Gp, H]
    Gp, H = q.shape

    def body(j, carry):
        m, l, acc = carry
        keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        kb = k_ref[keys, :].astype(jnp.float32)  # [bk, H]
        vb = v_ref[keys, :].astype(jnp.float32)
        s = jax.lax.dot_general(q, kb, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)  # [Gp, bk]
        pos = j * block_k + jax.lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
        s = jnp.where((pos >= start) & (pos < end), s, _NEG_INF)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + jnp.dot(p, vb, preferred_element_type=jnp.float32)
        return m_new, l, acc

    init = (jnp.full((Gp,), _NEG_INF, jnp.float32), jnp.zeros((Gp,), jnp.float32), jnp.zeros((Gp, H), jnp.float32))
    # Only the blocks that overlap [start, end); the first one holds `start`, so m is finite after it.
    _, l, acc = jax.lax.fori_loop(start // block_k, (end + block_k - 1) // block_k, body, init)
    o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_k", "sm_scale", "interpret"))
def decode_attention(
    q: jax.Array,  # [B, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    kv_start: jax.Array,  # [B] int32
    kv_end,  # int32 scalar (the same for every row, as in `infer`) or [B]
    *,
    block_k: int | None = None,
    sm_scale: float | None = None,
    interpret: bool = False,
) -> jax.Array:  # [B, N, H]
    B, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != H or N % K:
        raise ValueError(f"decode_attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit [B,N,H] / [B,S,K,H]")
    G = N // K
    Gp = max(8, 1 << (G - 1).bit_length())  # a power-of-two tile of query heads
    block_k = block_k or math.gcd(S, 128)
    if S % block_k:
        raise ValueError(f"decode_attention: cache length {S} is not a multiple of block_k={block_k}")
    sm_scale = H**-0.5 if sm_scale is None else sm_scale
    qg = q.reshape(B, K, G, H)
    if Gp != G:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, Gp - G), (0, 0)))
    end = jnp.broadcast_to(jnp.asarray(kv_end, jnp.int32), (B,))
    bounds = jnp.stack([kv_start.astype(jnp.int32), end], axis=1)  # [B, 2]
    out = pl.pallas_call(
        functools.partial(_kernel, block_k=block_k, sm_scale=sm_scale),
        grid=(B, K),
        in_specs=[
            pl.BlockSpec((B, 2), lambda b, h: (0, 0)),
            pl.BlockSpec((None, None, Gp, H), lambda b, h: (b, h, 0, 0)),
            pl.BlockSpec((None, S, None, H), lambda b, h: (b, 0, h, 0)),
            pl.BlockSpec((None, S, None, H), lambda b, h: (b, 0, h, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, Gp, H), lambda b, h: (b, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((B, K, Gp, H), q.dtype),
        interpret=interpret,
    )(bounds, qg, k, v)
    return out[:, :, :G].reshape(B, N, H)
