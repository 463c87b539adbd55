"""Which keys a query may see, and what a hidden key's score becomes: the one definition that every attention
in the repository builds its mask from (models' XLA attention, the CPU-fused kernel, the flash kernels and
their reference, cuDNN's mask, the decode kernel and its reference, the KV-cache attention of `infer`).

The rules, as predicates over broadcastable index arrays (a kernel passes one tile's indices, the XLA paths
whole [T, S] grids):

- causal, right-aligned: query t sees key s iff s <= t + offset; for T queries over S keys, offset = S - T
  (T < S is decoding: the last query sees every key; T == S is the usual lower triangle);
- segments (packing): a query sees a key only when both carry the same non-zero id; id 0 is padding;
- branches (prompt sharing, T == S): within a segment, branch 0 is a trunk that every token sees; a token of
  branch b > 0 sees the trunk and branch b only, so a rejected completion never sees the chosen one;
- KV cache: a query at cache slot t sees slots [kv_start, t] of its row (left padding before kv_start).

A hidden key's score is `MASK_VALUE` (-inf, so it weighs exactly 0), and a query that sees no key at all
outputs zeros with zero gradients (`masked_softmax`), never NaN and never a uniform average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_VALUE = float("-inf")


def causal_visible(q_pos, k_pos, offset=0):
    """bool, the broadcast of q_pos and k_pos: key k_pos is not in the future of query q_pos."""
    return k_pos <= q_pos + offset


def segment_visible(q_seg, k_seg):
    """bool, broadcast: the same non-zero segment id (0 = padding sees nothing and is seen by nothing)."""
    return (q_seg == k_seg) & (q_seg != 0)


def branch_visible(q_branch, k_branch):
    """bool, broadcast: the key is the trunk (branch 0) or on the query's own branch."""
    return (k_branch == 0) | (k_branch == q_branch)


def cache_visible(q_slot, k_slot, kv_start):
    """bool, broadcast: cache slot k_slot holds one of the keys [kv_start, q_slot] of a query at slot q_slot."""
    return causal_visible(q_slot, k_slot) & (k_slot >= kv_start)


def attention_mask(
    T: int,
    S: int,
    *,
    causal: bool,
    segment_ids: jax.Array | None = None,  # [B, T], T == S
    branch_ids: jax.Array | None = None,  # [B, T], T == S
) -> jax.Array | None:  # bool [B|1, T, S]; None when every query sees every key
    mask = None
    if causal:
        mask = causal_visible(jnp.arange(T)[:, None], jnp.arange(S)[None, :], S - T)[None]
    if segment_ids is not None:
        same = segment_visible(segment_ids[:, :, None], segment_ids[:, None, :])
        mask = same if mask is None else mask & same
    if branch_ids is not None:
        seen = branch_visible(branch_ids[:, :, None], branch_ids[:, None, :])
        mask = seen if mask is None else mask & seen
    return mask


def masked_softmax(scores: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Softmax over the last axis of `scores`, keys where `mask` (broadcast to scores) is False left out.

    Hidden keys get MASK_VALUE and weigh exactly 0. A row that sees no key has max -inf; it is shifted by 0
    instead (exp(-inf) = 0), and the zero denominator is replaced by 1, so the row is all zeros with zero
    gradients rather than NaN."""
    if mask is not None:
        scores = jnp.where(mask, scores, MASK_VALUE)
    row_max = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    row_max = jnp.where(row_max == MASK_VALUE, 0.0, row_max)
    weights = jnp.exp(scores - row_max)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.where(denom == 0.0, 1.0, denom)
