"""Materialised-scores attention with a hand-written backward pass, laid out for XLA:CPU.

Same math as `attention.xla_attention` (the reference), arranged so the train step wastes no time:
- heads are moved to the front once ([B, K, G·T, H]), so the four score matmuls of forward and backward
  are plain batched GEMMs instead of einsums that XLA has to transpose around;
- the mask is applied as a 0/1 multiply after `exp`, which also zeroes fully masked (padding) rows;
- the backward uses the saved probabilities: dS = P ⊙ (dP − rowsum(dO ⊙ O)), no recomputation and no
  select/where passes over the [T, S] scores.
Letters: B batch, T/S query/key length, N query heads, K kv heads, G = N/K, H head dim, M = G·T.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from oyster_jax.models.attention import attention_mask

_NEG = -1e30


def _heads_first(q, k, v):
    B, T, N, H = q.shape
    K = k.shape[2]
    G = N // K
    qh = q.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)  # [B, K, M, H]
    kh = k.transpose(0, 2, 1, 3)  # [B, K, S, H]
    vh = v.transpose(0, 2, 1, 3)
    return qh, kh, vh


def _tokens_first(xh, B, T, K, G, H):  # [B, K, M, H] -> [B, T, N, H]
    return xh.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H)


def _probs(qh, kh, keep, scale, G):
    """[B, K, M, S] softmax probabilities; `keep` [B|1, T, S] float 0/1."""
    B, K, M, _ = qh.shape
    S = kh.shape[2]
    s = jnp.einsum("BKMH,BKSH->BKMS", qh, kh, preferred_element_type=jnp.float32) * scale
    s = s.reshape(B, K, G, M // G, S)
    keep5 = keep[:, None, None]
    s = jnp.where(keep5 > 0, s, _NEG)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)) * keep5
    p = e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return p.reshape(B, K, M, S)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, k, v, keep, scale):
    return _attend_fwd(q, k, v, keep, scale)[0]


def _attend_fwd(q, k, v, keep, scale):
    B, T, N, H = q.shape
    K = k.shape[2]
    G = N // K
    qh, kh, vh = _heads_first(q, k, v)
    p = _probs(qh, kh, keep, scale, G)
    oh = jnp.einsum("BKMS,BKSH->BKMH", p.astype(v.dtype), vh, preferred_element_type=jnp.float32)
    out = _tokens_first(oh, B, T, K, G, H).astype(q.dtype)
    return out, (qh, kh, vh, p, oh, keep)


def _attend_bwd(scale, res, dout):
    qh, kh, vh, p, oh, keep = res
    B, K, M, H = qh.shape
    T = dout.shape[1]
    G = M // T
    doh = dout.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, M, H).astype(jnp.float32)
    dv = jnp.einsum("BKMS,BKMH->BKSH", p, doh)
    dp = jnp.einsum("BKMH,BKSH->BKMS", doh, vh.astype(jnp.float32))
    delta = jnp.sum(doh * oh, axis=-1, keepdims=True)  # rowsum(dP ⊙ P) = rowsum(dO ⊙ O)
    ds = p * (dp - delta) * scale
    dq = jnp.einsum("BKMS,BKSH->BKMH", ds, kh.astype(jnp.float32))
    dk = jnp.einsum("BKMS,BKMH->BKSH", ds, qh.astype(jnp.float32))
    dq = _tokens_first(dq, B, T, K, G, H).astype(qh.dtype)
    dk = dk.transpose(0, 2, 1, 3).astype(kh.dtype)
    dv = dv.transpose(0, 2, 1, 3).astype(vh.dtype)
    return dq, dk, dv, jnp.zeros_like(keep)


_attend.defvjp(_attend_fwd, _attend_bwd)


def fused_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T], T == S
    sm_scale: float | None = None,
) -> jax.Array:  # [B, T, N, H]
    """Drop-in for `xla_attention` (same masking rules: causal, same non-zero segment; padding rows -> 0)."""
    T, S, H = q.shape[1], k.shape[1], q.shape[3]
    scale = float(H**-0.5 if sm_scale is None else sm_scale)
    mask = attention_mask(segment_ids, segment_ids, T, S, causal)
    keep = jnp.ones((1, T, S), jnp.float32) if mask is None else mask.astype(jnp.float32)
    return _attend(q, k, v, keep, scale)
