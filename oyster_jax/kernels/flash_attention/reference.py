"""Pure-JAX attention that the Pallas kernels are tested against.

Deliberately simple: it materializes the [T, S] scores in float32 (float64 for float64 inputs) at full
matmul precision, repeats nothing (grouped heads are a reshape), and differentiates with plain `jax.grad`.
Which keys a query sees is `oyster_jax.kernels.masking` (causal right-aligned, segments, branches), the
definition the kernels' tile masks use too; a query that sees no key at all (padding, or t + (S - T) < 0)
outputs zeros and gets zero gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from oyster_jax.kernels.masking import attention_mask, masked_softmax


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
    probs = masked_softmax(scores, None if mask is None else mask[:, None, None])
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v.astype(acc), precision=hi)
    return out.reshape(B, T, N, H).astype(q.dtype)
