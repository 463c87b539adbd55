"""Materialised-scores attention with a hand-written backward pass, laid out for XLA:CPU.

Same math as the reference attention (`kernels/flash_attention/reference.py`), arranged so the CPU train
step wastes no time:
- heads are moved to the front once ([B, K, T·G, H]), so the score matmuls of forward and backward are
  plain batched GEMMs instead of einsums that XLA has to transpose around;
- causal attention runs in query blocks of 64 that skip the key blocks they cannot see (at T = 512 this
  computes 53% of the scores; 64 measured faster than 32 or 128 on CPU);
- the backward uses the saved probabilities: dS = P ⊙ (dP − rowsum(dO ⊙ O)), no recomputation and no
  select/where passes over the [T, S] scores.
`keep` is the 0/1 float mask [B|1, T, S] (`kernels.masking.attention_mask`; float so that it can be a
custom-VJP input with a zero cotangent); masked scores and fully masked rows follow `masking.masked_softmax`.
Letters: B batch, T/S query/key length, N query heads, K kv heads, G = N/K, H head dim, M = T·G.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from oyster_jax.kernels.masking import masked_softmax

# Causal query block sizes, tried in order (block i only sees keys [0, (i + 1) * size)); at most 16 blocks,
# since the blocks are unrolled into the program (long sequences get bigger blocks, not a bigger program).
_BLOCKS = (64, 128, 256, 512, 1024)
_MAX_BLOCKS = 16


def _heads_first(q, k, v):
    """q [B, T, N, H] -> [B, K, T·G, H] (rows t-major, so a run of positions is one contiguous slab);
    k, v [B, S, K, H] -> [B, K, S, H]."""
    B, T, N, H = q.shape
    K = k.shape[2]
    qh = q.reshape(B, T, K, N // K, H).transpose(0, 2, 1, 3, 4).reshape(B, K, T * (N // K), H)
    return qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _tokens_first(xh, B, T, K, G, H):  # [B, K, T·G, H] -> [B, T, N, H]
    return xh.reshape(B, K, T, G, H).transpose(0, 2, 1, 3, 4).reshape(B, T, K * G, H)


def _blocks(T: int, S: int, causal: bool) -> list[tuple[int, int, int]]:
    """(first query, last query + 1, keys seen) per query block; causal blocks skip the keys they cannot see."""
    fits = (b for b in _BLOCKS if T % b == 0 and T > b and T // b <= _MAX_BLOCKS)
    size = next(fits, None) if causal and T == S else None
    if size is None:
        return [(0, T, S)]
    return [(i, i + size, i + size) for i in range(0, T, size)]


def _probs(qb, kb, keep_b, scale, G):
    """Scores -> probabilities [B, K, Tb·G, Sb] of one query block; `keep_b` [B|1, Tb, Sb] float 0/1."""
    B, K, M, _ = qb.shape
    S = kb.shape[2]
    s = jnp.einsum("BKMH,BKSH->BKMS", qb, kb, preferred_element_type=jnp.float32) * scale
    s = s.reshape(B, K, M // G, G, S)
    p = masked_softmax(s, keep_b[:, None, :, None, :] > 0)
    return p.reshape(B, K, M, S)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_attend(q, k, v, keep, scale, causal):
    """q [B, T, N, H], k/v [B, S, K, H], keep float [B|1, T, S] -> [B, T, N, H]; `scale`, `causal` static."""
    return _attend_fwd(q, k, v, keep, scale, causal)[0]


def _attend_fwd(q, k, v, keep, scale, causal):
    B, T, N, H = q.shape
    K, S = k.shape[2], k.shape[1]
    G = N // K
    qh, kh, vh = _heads_first(q, k, v)
    probs, outs = [], []
    for t0, t1, sk in _blocks(T, S, causal):
        p = _probs(qh[:, :, t0 * G : t1 * G], kh[:, :, :sk], keep[:, t0:t1, :sk], scale, G)
        outs.append(jnp.einsum("BKMS,BKSH->BKMH", p.astype(v.dtype), vh[:, :, :sk], preferred_element_type=jnp.float32))
        probs.append(p)
    oh = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
    out = _tokens_first(oh, B, T, K, G, H).astype(q.dtype)
    return out, (qh, kh, vh, tuple(probs), oh, keep)


def _attend_bwd(scale, causal, res, dout):
    qh, kh, vh, probs, oh, keep = res
    B, K, M, H = qh.shape
    T, S = dout.shape[1], kh.shape[2]
    G = M // T
    f32 = jnp.float32
    doh = dout.reshape(B, T, K, G, H).transpose(0, 2, 1, 3, 4).reshape(B, K, M, H).astype(f32)
    delta = jnp.sum(doh * oh, axis=-1, keepdims=True)  # rowsum(dP ⊙ P) = rowsum(dO ⊙ O)
    dqs = []
    dk = jnp.zeros((B, K, S, H), f32)
    dv = jnp.zeros((B, K, S, H), f32)
    for (t0, t1, sk), p in zip(_blocks(T, S, causal), probs):
        rows = slice(t0 * G, t1 * G)
        do_b = doh[:, :, rows]
        dp = jnp.einsum("BKMH,BKSH->BKMS", do_b, vh[:, :, :sk].astype(f32))
        ds = p * (dp - delta[:, :, rows]) * scale
        dqs.append(jnp.einsum("BKMS,BKSH->BKMH", ds, kh[:, :, :sk].astype(f32)))
        dk = dk.at[:, :, :sk].add(jnp.einsum("BKMS,BKMH->BKSH", ds, qh[:, :, rows].astype(f32)))
        dv = dv.at[:, :, :sk].add(jnp.einsum("BKMS,BKMH->BKSH", p, do_b))
    dq = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=2)
    dq = _tokens_first(dq, B, T, K, G, H).astype(qh.dtype)
    return (
        dq,
        dk.transpose(0, 2, 1, 3).astype(kh.dtype),
        dv.transpose(0, 2, 1, 3).astype(vh.dtype),
        jnp.zeros_like(keep),
    )


fused_attend.defvjp(_attend_fwd, _attend_bwd)
