"""The decoder as a pure function over the params pytree, with a KV cache for generation.

It runs the model's own Linen modules (oyster_jax/models/transformer.py: `Transformer.embed`, each
`DecoderLayer`, `Transformer.head`), so generation and training share every line of layer math. The only
difference is attention: each layer's `Attention` gets an `attend` that writes its K/V into a
preallocated cache and attends over the cached keys. `tests/test_infer_generate.py` checks the result
against `models.forward` and against `transformers`.

Cache layout: one left-padded row per sequence. Every row writes its token t at the same slot, so a
single `dynamic_update_slice` serves the whole batch; row b's keys live in slots [kv_start[b], write_at].

    cache = init_cache(cfg, B, S)                       # k, v: [L, B, S, K, H] in the compute dtype
    logits, cache = decode(cfg, params, tokens, positions, cache, write_at, kv_start)
"""

from __future__ import annotations

import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from oyster_jax.kernels.masking import cache_visible, masked_softmax
from oyster_jax.models.attention import attention
from oyster_jax.models.config import ModelConfig, dtype_of
from oyster_jax.models.transformer import DecoderLayer, Transformer
from oyster_jax.sharding import logical_to_sharding, resolve_rules

# Logical axes of the cache, resolved with the same rules table as training.
CACHE_AXES = (None, "act_batch", None, "act_kv_heads", None)  # [L, B, S, K, H]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array  # [L, B, S, K, H]
    v: jax.Array  # [L, B, S, K, H]


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    dt = dtype_of(cfg.dtype)
    return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt))


def constrain(x: jax.Array, logical: tuple, mesh: Mesh | None, rules) -> jax.Array:
    """Sharding constraint from logical axis names (no-op without a mesh)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_sharding(PartitionSpec(*logical), x.shape, mesh, rules))


def cached_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    q_slots: jax.Array,  # [T] or [B, T] int32: cache slot of each query
    kv_start: jax.Array,  # [B] int32: first valid key slot of each row
) -> jax.Array:  # [B, T, N, H]
    """Causal attention over cache slots: query at slot t sees keys in [kv_start[b], t]."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    qg = q.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * H**-0.5
    slots = jnp.arange(S, dtype=jnp.int32)
    q_slots = jnp.broadcast_to(q_slots, (B, T))
    mask = cache_visible(q_slots[:, :, None], slots[None, None, :], kv_start[:, None, None])  # [B, T, S]
    probs = masked_softmax(scores, mask[:, None, None])
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(B, T, N, H).astype(q.dtype)


def _cache_attend(cfg, cache: KVCache, i, write_at, kv_start, decode_attention, written: dict):
    """The `attend` that layer i's `Attention` module calls: write this call's k/v at slots
    [write_at, write_at + T) of the cache, then attend over the cache (T == 1) or over the prompt itself
    (prefill). The updated cache is handed back through `written`, inside the same trace."""

    def attend(q, k, v):  # q [B, T, N, H]; k, v [B, T, K, H] (normed, rotated) -> [B, T, N, H]
        T = q.shape[1]
        if T > 1:  # padding slots hold zeros, so no NaN/inf from a padded row can reach a masked-out product
            valid = jnp.arange(T, dtype=jnp.int32)[None] + write_at >= kv_start[:, None]  # [B, T]
            k = jnp.where(valid[:, :, None, None], k, 0).astype(k.dtype)
            v = jnp.where(valid[:, :, None, None], v, 0).astype(v.dtype)
        # Write into the full [L, ...] buffer (not a per-layer copy) so XLA can update it in place.
        if write_at.ndim == 1:  # one slot per row (continuous batching, T == 1): a scatter
            rows = jnp.arange(q.shape[0])
            new = KVCache(
                cache.k.at[i, rows, write_at].set(k[:, 0].astype(cache.k.dtype)),
                cache.v.at[i, rows, write_at].set(v[:, 0].astype(cache.v.dtype)),
            )
        else:
            at = (i, 0, write_at, 0, 0)
            new = KVCache(
                jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype)[None], at),
                jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype)[None], at),
            )
        written["cache"] = new
        if T > 1:
            # Prefill (on an empty cache, write_at = 0): the prompt's own keys are all a query can see, so
            # this is ordinary causal attention with left padding as segment 0, through the training
            # dispatch (the flash kernel on GPU / TPU).
            segment_ids = (jnp.arange(T, dtype=jnp.int32)[None] >= kv_start[:, None]).astype(jnp.int32)
            return attention(q, k, v, impl=cfg.attention_impl, causal=True, segment_ids=segment_ids)
        layer_k = jax.lax.dynamic_index_in_dim(new.k, i, keepdims=False)
        layer_v = jax.lax.dynamic_index_in_dim(new.v, i, keepdims=False)
        if decode_attention is not None:
            return decode_attention(q[:, 0], layer_k, layer_v, kv_start, write_at + 1)[:, None]
        return cached_attention(q, layer_k, layer_v, write_at[..., None], kv_start)

    return attend


@contextlib.contextmanager
def _activation_rules(mesh: Mesh | None, rules):
    """The model's `nn.with_logical_constraint`s resolve against `mesh` inside this (traced) function, as
    training's `sharding.use_rules` makes them do outside jit (`jax.set_mesh` cannot be entered under jit)."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(resolve_rules(rules)):
        yield


def decode(
    cfg: ModelConfig,
    params: dict,
    tokens: jax.Array,  # [B, T] int32
    positions: jax.Array,  # [B, T] int32 (RoPE positions)
    cache: KVCache,
    write_at: jax.Array,  # int32 scalar: cache slot of tokens[:, 0]; or [B] (T == 1): one slot per row
    kv_start: jax.Array,  # [B] int32: first valid cache slot of each row (left padding before it)
    *,
    last_only: bool = True,
    mesh: Mesh | None = None,
    rules=None,
    decode_attention=None,
) -> tuple[jax.Array, KVCache]:
    """Run T new tokens through the model, writing their K/V at slots [write_at, write_at + T).

    T > 1 is a prefill and must start on an empty cache; T == 1 is a decode step over the whole cache. A
    per-row `write_at` [B] lets rows sit at different lengths (the serving engine's slots): row b writes
    at slot write_at[b] and sees keys [kv_start[b], write_at[b]].
    Returns float32 logits [B, V] of the last token (`last_only`) or [B, T, V], and the updated cache.
    `decode_attention(q [B, N, H], k, v [B, S, K, H], kv_start [B], kv_end scalar) -> [B, N, H]` replaces
    the XLA attention for single-token steps (the Pallas kernel).
    """
    write_at = jnp.asarray(write_at, jnp.int32)
    model, layer_module = Transformer(cfg), DecoderLayer(cfg)

    def layer(p, x, cache, i):
        written = {}
        attend = _cache_attend(cfg, cache, i, write_at, kv_start, decode_attention, written)
        x = layer_module.apply({"params": p}, x, positions, None, None, attend)
        return x, written["cache"]

    with _activation_rules(mesh, rules):
        x = model.apply({"params": params}, tokens, method=Transformer.embed)
        if cfg.scan_layers:

            def body(carry, p):
                x, cache, i = carry
                x, cache = layer(p, x, cache, i)
                return (x, cache, i + 1), None

            (x, cache, _), _ = jax.lax.scan(body, (x, cache, jnp.int32(0)), params["layers"])
        else:
            for i in range(cfg.num_layers):
                x, cache = layer(params[f"layers_{i}"], x, cache, i)
        if last_only:
            x = x[:, -1:]
        logits = model.apply({"params": params}, x, method=Transformer.head)
    cache = KVCache(*(constrain(c, CACHE_AXES, mesh, rules) for c in (cache.k, cache.v)))
    return (logits[:, 0] if last_only else logits), cache
