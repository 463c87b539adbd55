"""The decoder as a pure function over the params pytree, with a KV cache for generation.

The Linen `Transformer` (oyster_jax/models/transformer.py) has no cache; generation needs one, so this
module replays the same layer math (same parameter names, the same `rope_inv_freq` / `apply_rope`) on
plain arrays and reads and writes K/V in a preallocated cache. `tests/test_infer_generate.py` checks it
against `models.forward` and against `transformers`.

Cache layout: one left-padded row per sequence. Every row writes its token t at the same slot, so a
single `dynamic_update_slice` serves the whole batch; row b's keys live in slots [kv_start[b], write_at].

    cache = init_cache(cfg, B, S)                       # k, v: [L, B, S, K, H] in the compute dtype
    logits, cache = decode(cfg, params, tokens, positions, cache, write_at, kv_start)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from oyster_jax.models.attention import attention
from oyster_jax.models.config import ModelConfig, dtype_of
from oyster_jax.models.transformer import apply_rope, rope_inv_freq

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

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
    from oyster_jax.sharding import logical_to_sharding

    return jax.lax.with_sharding_constraint(x, logical_to_sharding(PartitionSpec(*logical), x.shape, mesh, rules))


def _rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:  # same math as models' RMSNorm
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * y.astype(x.dtype)


def cached_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    q_slots: jax.Array,  # [T] int32: cache slot of each query
    kv_start: jax.Array,  # [B] int32: first valid key slot of each row
) -> jax.Array:  # [B, T, N, H]
    """Causal attention over cache slots: query at slot t sees keys in [kv_start[b], t]."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    qg = q.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) * H**-0.5
    slots = jnp.arange(S, dtype=jnp.int32)
    mask = (slots[None, None, :] <= q_slots[None, :, None]) & (slots[None, None, :] >= kv_start[:, None, None])
    scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)  # mask [B, T, S]
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(B, T, N, H).astype(q.dtype)


def _layer(cfg, p, x, positions, cache: KVCache, i, write_at, kv_start, mesh, rules, decode_attention):
    """Decoder layer i. x [B, T, D]; the full cache [L, B, S, K, H] -> (x, cache with layer i written)."""
    dt = dtype_of(cfg.dtype)
    T = x.shape[1]
    a = p["self_attn"]
    h = _rms_norm(x, p["input_layernorm"]["scale"], cfg.rms_norm_eps)
    q = jnp.einsum("BTD,DNH->BTNH", h, a["q_proj"].astype(dt))
    k = jnp.einsum("BSD,DKH->BSKH", h, a["k_proj"].astype(dt))
    v = jnp.einsum("BSD,DKH->BSKH", h, a["v_proj"].astype(dt))
    if cfg.qkv_bias:
        q = q + a["q_bias"].astype(dt)
        k = k + a["k_bias"].astype(dt)
        v = v + a["v_bias"].astype(dt)
    if cfg.qk_norm:
        q = _rms_norm(q, a["q_norm"]["scale"], cfg.rms_norm_eps)
        k = _rms_norm(k, a["k_norm"]["scale"], cfg.rms_norm_eps)
    inv_freq = rope_inv_freq(cfg)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)
    q = constrain(q, ("act_batch", None, "act_heads", None), mesh, rules)
    if T > 1:  # padding slots hold zeros, so no NaN/inf from a padded row can reach a masked-out product
        valid = jnp.arange(T, dtype=jnp.int32)[None] + write_at >= kv_start[:, None]  # [B, T]
        k = jnp.where(valid[:, :, None, None], k, 0).astype(k.dtype)
        v = jnp.where(valid[:, :, None, None], v, 0).astype(v.dtype)
    # Write into the full [L, ...] buffer (not a per-layer copy) so XLA can update it in place.
    at = (i, 0, write_at, 0, 0)
    cache = KVCache(
        jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype)[None], at),
        jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype)[None], at),
    )
    if T == 1:
        layer_k = jax.lax.dynamic_index_in_dim(cache.k, i, keepdims=False)
        layer_v = jax.lax.dynamic_index_in_dim(cache.v, i, keepdims=False)
        if decode_attention is not None:
            out = decode_attention(q[:, 0], layer_k, layer_v, kv_start, write_at + 1)[:, None]
        else:
            out = cached_attention(q, layer_k, layer_v, write_at[None], kv_start)
    else:
        # Prefill (on an empty cache, write_at = 0): the prompt's own keys are all a query can see, so this
        # is ordinary causal attention with left padding as segment 0, through the training dispatch
        # (the flash kernel on GPU / TPU).
        segment_ids = (jnp.arange(T, dtype=jnp.int32)[None] >= kv_start[:, None]).astype(jnp.int32)
        out = attention(q, k, v, impl=cfg.attention_impl, causal=True, segment_ids=segment_ids)
    out = constrain(out, ("act_batch", None, "act_heads", None), mesh, rules)
    attn_out = jnp.einsum("BTNH,NHD->BTD", out, a["o_proj"].astype(dt))
    if cfg.o_bias:
        attn_out = attn_out + a["o_bias"].astype(dt)
    x = x + attn_out
    m = p["mlp"]
    h = _rms_norm(x, p["post_attention_layernorm"]["scale"], cfg.rms_norm_eps)
    gate = jnp.einsum("BTD,DF->BTF", h, m["gate_proj"].astype(dt))
    up = jnp.einsum("BTD,DF->BTF", h, m["up_proj"].astype(dt))
    hidden = constrain(jax.nn.silu(gate) * up, ("act_batch", None, "act_mlp"), mesh, rules)
    x = x + jnp.einsum("BTF,FD->BTD", hidden, m["down_proj"].astype(dt))
    return constrain(x, ("act_batch", None, "act_embed"), mesh, rules), cache


_LAYER_PARAMS = {
    "input_layernorm": {"scale"},
    "post_attention_layernorm": {"scale"},
    "self_attn": {"q_proj", "k_proj", "v_proj", "o_proj", "q_bias", "k_bias", "v_bias", "o_bias", "q_norm", "k_norm"},
    "mlp": {"gate_proj", "up_proj", "down_proj"},
}
_TOP_PARAMS = {"embed_tokens", "norm", "lm_head"}


def check_params(cfg: ModelConfig, params: dict) -> None:
    """Refuse params with tensors this decoder does not apply: if the model grows a new parameter, generation
    must fail loudly until `_layer` learns it, never silently ignore it."""
    layers = [params["layers"]] if cfg.scan_layers else [params[f"layers_{i}"] for i in range(cfg.num_layers)]
    unknown = sorted(set(params) - _TOP_PARAMS - {"layers"} - {f"layers_{i}" for i in range(cfg.num_layers)})
    for layer in layers:
        for group, names in layer.items():
            extra = set(names) - _LAYER_PARAMS.get(group, set()) if isinstance(names, dict) else {group}
            unknown += sorted(f"{group}/{n}" for n in extra)
    if unknown:
        raise ValueError(f"infer.decoder does not know the parameter(s) {sorted(set(unknown))}; update _layer")


def decode(
    cfg: ModelConfig,
    params: dict,
    tokens: jax.Array,  # [B, T] int32
    positions: jax.Array,  # [B, T] int32 (RoPE positions)
    cache: KVCache,
    write_at: jax.Array,  # int32 scalar: cache slot of tokens[:, 0]
    kv_start: jax.Array,  # [B] int32: first valid cache slot of each row (left padding before it)
    *,
    last_only: bool = True,
    mesh: Mesh | None = None,
    rules=None,
    decode_attention=None,
) -> tuple[jax.Array, KVCache]:
    """Run T new tokens through the model, writing their K/V at slots [write_at, write_at + T).

    T > 1 is a prefill and must start on an empty cache; T == 1 is a decode step over the whole cache.
    Returns float32 logits [B, V] of the last token (`last_only`) or [B, T, V], and the updated cache.
    `decode_attention(q [B, N, H], k, v [B, S, K, H], kv_start [B], kv_end scalar) -> [B, N, H]` replaces
    the XLA attention for single-token steps (the Pallas kernel).
    """
    dt = dtype_of(cfg.dtype)
    write_at = jnp.asarray(write_at, jnp.int32)
    x = jnp.take(params["embed_tokens"], tokens, axis=0).astype(dt)
    x = constrain(x, ("act_batch", None, "act_embed"), mesh, rules)

    def layer(p, x, cache, i):
        return _layer(cfg, p, x, positions, cache, i, write_at, kv_start, mesh, rules, decode_attention)

    if cfg.scan_layers:

        def body(carry, p):
            x, cache, i = carry
            x, cache = layer(p, x, cache, i)
            return (x, cache, i + 1), None

        (x, cache, _), _ = jax.lax.scan(body, (x, cache, jnp.int32(0)), params["layers"])
    else:
        for i in range(cfg.num_layers):
            x, cache = layer(params[f"layers_{i}"], x, cache, i)
    cache = KVCache(*(constrain(c, CACHE_AXES, mesh, rules) for c in (cache.k, cache.v)))
    if last_only:
        x = x[:, -1:]
    h = _rms_norm(x, params["norm"]["scale"], cfg.rms_norm_eps)
    if cfg.tie_word_embeddings:
        logits = jnp.einsum("BTD,VD->BTV", h, params["embed_tokens"].astype(dt), preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("BTD,DV->BTV", h, params["lm_head"].astype(dt), preferred_element_type=jnp.float32)
    logits = constrain(logits, ("act_batch", None, "act_vocab"), mesh, rules)
    return (logits[:, 0] if last_only else logits), cache
