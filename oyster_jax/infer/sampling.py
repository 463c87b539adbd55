"""Next-token choice: greedy, temperature, top-k, top-p (applied in that order, as `transformers` does).

Sampling parameters are traced scalars, so changing them never recompiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(
    logits: jax.Array,  # [B, V] float32
    top_k: jax.Array,  # int32 scalar; <= 0 keeps everything
    top_p: jax.Array,  # float32 scalar; >= 1 keeps everything
) -> jax.Array:  # [B, V], removed entries at -inf
    """Keep the top_k largest logits, then the smallest set whose probability reaches top_p (at least one)."""
    V = logits.shape[-1]
    order = jnp.arange(V, dtype=jnp.int32)
    sorted_desc = -jnp.sort(-logits, axis=-1)  # [B, V]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth = sorted_desc[:, k - 1][:, None]  # ties with the k-th value are kept, as in transformers
    logits = jnp.where(logits < kth, -jnp.inf, logits)
    sorted_desc = jnp.where(order[None] < k, sorted_desc, -jnp.inf)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the strictly better tokens
    keep = (mass_before < top_p) | (order[None] == 0)
    n_keep = jnp.sum(keep, axis=-1)  # [B]; keep is a prefix of the sorted order
    threshold = jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def row_keys(seed_key: jax.Array, rows: jax.Array, step: jax.Array) -> jax.Array:
    """One key per row and step, independent of batch size and padding: fold_in(fold_in(seed, row), step)."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(seed_key, r), step))(rows)


def choose_tokens(
    logits: jax.Array,  # [B, V] float32
    keys: jax.Array,  # [B] PRNG keys
    temperature: jax.Array,  # float32 scalar; 0 = greedy
    top_k: jax.Array,  # int32 scalar; <= 0 = off
    top_p: jax.Array,  # float32 scalar; >= 1 = off
) -> jax.Array:  # [B] int32
    """Greedy when temperature is 0, else a sample. Branches are `lax.cond`s on traced scalars: one compiled
    program serves every setting, and only the taken branch runs (no vocabulary sort when greedy)."""

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sample(logits):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        filtering = (top_k > 0) | (top_p < 1)
        scaled = jax.lax.cond(filtering, lambda x: filter_logits(x, top_k, top_p), lambda x: x, scaled)
        return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, sample, greedy, logits)
