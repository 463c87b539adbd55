"""Pure-JAX decode attention that the kernel is tested against (tests/test_infer_decode_attention.py).

Row b's one query sits at cache slot kv_end - 1 and sees slots [kv_start[b], kv_end) (`kernels.masking.
cache_visible`: left padding before kv_start, empty slots from kv_end on). Scores in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from oyster_jax.kernels.masking import cache_visible, masked_softmax


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
    end = jnp.broadcast_to(jnp.asarray(kv_end), (B,))
    valid = cache_visible(end[:, None] - 1, jnp.arange(S)[None], kv_start[:, None])  # [B, S]
    probs = masked_softmax(scores, valid[:, None, None])
    out = jnp.einsum("BKGS,BSKH->BKGH", probs, v.astype(jnp.float32))
    return out.reshape(B, N, H).astype(q.dtype)
