"""Pure-JAX attention that the Pallas kernels are tested against.

Deliberately simple: it materializes the [T, S] scores in float32 (float64 for float64 inputs) at full
matmul precision, repeats
nothing (grouped heads are a reshape), and differentiates with plain `jax.grad`. Semantics it defines,
and the kernels must match:

- causal masking is right-aligned: query t sees key s iff s <= t + (S - T), so with T < S (decoding)
  the last query sees every key; with T == S this is the usual lower triangle;
- segment ids (T == S): a query sees a key only when both carry the same non-zero id; id 0 is padding;
- branch ids (T == S, prompt sharing): within a segment, branch 0 is a trunk every token may see, and a
  token of branch b > 0 sees the trunk and branch b only (a rejected completion never sees the chosen one);
- a query that sees no key at all (padding, or t + (S - T) < 0) outputs zeros and gets zero gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(
    T: int,
    S: int,
    *,
    causal: bool,
    segment_ids: jax.Array | None,  # [B, T], T == S
    branch_ids: jax.Array | None = None,  # [B, T], T == S
) -> jax.Array | None:  # bool [B|1, T, S]
    mask = None
    if causal:
        mask = (jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + (S - T))[None]
    if segment_ids is not None:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        same = same & (segment_ids[:, :, None] != 0)
        mask = same if mask is None else mask & same
    if branch_ids is not None:
        seen = (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
        mask = seen if mask is None else mask & seen
    return mask


def attention_reference(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T]
    sm_scale: float | None = None,
    branch_ids: jax.Array | None = None,  # [B, T]
) -> jax.Array:  # [B, T, N, H] in q.dtype
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    sm_scale = H**-0.5 if sm_scale is None else sm_scale
    hi = jax.lax.Precision.HIGHEST
    acc = jnp.promote_types(q.dtype, jnp.float32)  # float32, or float64 when checking the checker
    qg = q.astype(acc).reshape(B, T, K, G, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k.astype(acc), precision=hi) * sm_scale
    mask = attention_mask(T, S, causal=causal, segment_ids=segment_ids, branch_ids=branch_ids)
    if mask is not None:
        # -inf (not a large finite value) so that masked keys contribute exactly 0, and a row with no
        # visible key has max -inf, which is replaced by 0 below instead of producing NaN.
        scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
    row_max = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.exp(scores - row_max)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(acc), precision=hi)
    return out.reshape(B, T, N, H).astype(q.dtype)
