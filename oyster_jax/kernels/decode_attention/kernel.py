"""The decode-attention kernel body: one program per (row, K/V head).

The program holds the G query heads of its group as a [Gp, H] tile (G padded to a power of two), walks only
the key blocks that overlap the row's valid range [start, end) with an online softmax, and reads K/V of its
head straight from the cache layout [B, S, K, H]: no repeat, no transpose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from oyster_jax.kernels.masking import MASK_VALUE, cache_visible


def decode_kernel(bounds_ref, q_ref, k_ref, v_ref, o_ref, *, block_k: int, sm_scale: float):
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
        s = jnp.where(cache_visible(end - 1, pos, start), s, MASK_VALUE)  # the query sits at slot end - 1
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + jnp.dot(p, vb, preferred_element_type=jnp.float32)
        return m_new, l, acc

    init = (jnp.full((Gp,), MASK_VALUE, jnp.float32), jnp.zeros((Gp,), jnp.float32), jnp.zeros((Gp, H), jnp.float32))
    # Only the blocks that overlap [start, end); the first one holds `start`, so m is finite after it.
    _, l, acc = jax.lax.fori_loop(start // block_k, (end + block_k - 1) // block_k, body, init)
    o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)
