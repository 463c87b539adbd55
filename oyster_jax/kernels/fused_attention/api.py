"""`fused_attention`: the masks and scale of one call, then the blocked custom-VJP kernel (kernel.py).

Its semantics are those of `kernels/flash_attention/reference.py` (the pure-JAX definition, masks from
`kernels.masking`); tests/test_train_fused_attention.py holds values and gradients to the XLA attention
of `models.attention` and to that reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from oyster_jax.kernels.fused_attention.kernel import fused_attend
from oyster_jax.kernels.masking import attention_mask


def fused_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    *,
    causal: bool = True,
    segment_ids: jax.Array | None = None,  # [B, T], T == S
    sm_scale: float | None = None,
    branch_ids: jax.Array | None = None,  # [B, T]: shared-prompt branches (kernels.masking)
) -> jax.Array:  # [B, T, N, H]
    """Causal, same non-zero segment, branches; a query that sees no key (padding) outputs zeros."""
    T, S, H = q.shape[1], k.shape[1], q.shape[3]
    scale = float(H**-0.5 if sm_scale is None else sm_scale)
    mask = attention_mask(T, S, causal=causal, segment_ids=segment_ids, branch_ids=branch_ids)
    keep = jnp.ones((1, T, S), jnp.float32) if mask is None else mask.astype(jnp.float32)
    return fused_attend(q, k, v, keep, scale, bool(causal))
