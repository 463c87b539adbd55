"""The decoder-only LM (Qwen3 / Qwen2 / Llama 3) as Flax Linen modules.

Parameters carry logical axis names (`nn.with_logical_partitioning`); activations carry logical
constraints. The mapping of those names to mesh axes lives in one table per recipe
(`configs/sharding.py`), never in the layers.
Parameter names follow Hugging Face's where they exist, so conversion is a table, not a translation.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from oyster_jax.models import backend, lora
from oyster_jax.models.attention import attention
from oyster_jax.models.config import REMAT_POLICIES, ModelConfig, dtype_of

# Activation logical axes (parameters use: vocab, embed, heads, kv_heads, head_dim, mlp, layers).
BATCH, LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB = (
    "act_batch",
    "act_length",
    "act_embed",
    "act_heads",
    "act_kv_heads",
    "act_mlp",
    "act_vocab",
)


def _remat_policy(name: str):
    """config.REMAT_POLICIES[name] as a `jax.checkpoint_policies` policy (None: save nothing)."""
    policy = REMAT_POLICIES[name]
    return None if policy is None else getattr(jax.checkpoint_policies, policy)


def _param(module: nn.Module, name: str, shape, axes, init, dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _normal(fan_in: int):
    return nn.initializers.normal(stddev=1.0 / math.sqrt(fan_in))


class RMSNorm(nn.Module):
    eps: float
    param_dtype: jnp.dtype
    axis: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        scale = _param(self, "scale", (x.shape[-1],), (self.axis,), nn.initializers.ones, self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:  # [H/2] float32
    H = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
    scaling = cfg.rope_scaling_dict
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = jnp.where(medium, smoothed, scaled)
    return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """x [B, T, N, H], positions [B, T] -> x rotated (rotate-half convention, as in HF)."""
    angles = positions[:, :, None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class Attention(nn.Module):
    """Grouped-query self-attention. `attend(q [B, T, N, H], k [B, T, K, H], v) -> [B, T, N, H]`, when given,
    replaces attention over the call's own keys: the KV-cache decoder (`infer.decoder`) passes one that writes
    k/v into its cache and attends over all cached keys, so generation runs this very module."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, branch_ids=None, attend=None):  # x [B, T, D] -> [B, T, D]
        cfg = self.cfg
        D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pdt, dt = dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
        wq = _param(self, "q_proj", (D, N, H), ("embed", "heads", "head_dim"), _normal(D), pdt)
        wk = _param(self, "k_proj", (D, K, H), ("embed", "kv_heads", "head_dim"), _normal(D), pdt)
        wv = _param(self, "v_proj", (D, K, H), ("embed", "kv_heads", "head_dim"), _normal(D), pdt)
        wo = _param(self, "o_proj", (N, H, D), ("heads", "head_dim", "embed"), _normal(N * H), pdt)
        B, T, _ = x.shape
        cpu_tuned = backend.cpu_tuned(cfg.math_impl)
        if cpu_tuned:
            # Projections as 2-D matmuls over B*T rows: with 3-D einsums XLA:CPU transposes whole activation
            # gradients to form the weight gradients (~20% of a train step); the math is the same.
            x2 = x.reshape(B * T, D)
            q = (x2 @ wq.astype(dt).reshape(D, N * H)).reshape(B, T, N, H)
            k = (x2 @ wk.astype(dt).reshape(D, K * H)).reshape(B, T, K, H)
            v = (x2 @ wv.astype(dt).reshape(D, K * H)).reshape(B, T, K, H)
        else:
            q = jnp.einsum("BTD,DNH->BTNH", x, wq.astype(dt))
            k = jnp.einsum("BTD,DKH->BTKH", x, wk.astype(dt))
            v = jnp.einsum("BTD,DKH->BTKH", x, wv.astype(dt))
        for target, out_axes, out_dims in (
            ("q", ("heads", "head_dim"), (N, H)),
            ("k", ("kv_heads", "head_dim"), (K, H)),
            ("v", ("kv_heads", "head_dim"), (K, H)),
        ):
            d = lora.delta(self, cfg.lora, target, x, ("embed",), out_axes, out_dims, dt)
            if d is not None:
                q, k, v = (q + d, k, v) if target == "q" else (q, k + d, v) if target == "k" else (q, k, v + d)
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q = q + _param(self, "q_bias", (N, H), ("heads", "head_dim"), zeros, pdt).astype(dt)
            k = k + _param(self, "k_bias", (K, H), ("kv_heads", "head_dim"), zeros, pdt).astype(dt)
            v = v + _param(self, "v_bias", (K, H), ("kv_heads", "head_dim"), zeros, pdt).astype(dt)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, pdt, axis="head_dim", name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, pdt, axis="head_dim", name="k_norm")(k)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        q = nn.with_logical_constraint(q, (BATCH, LENGTH, ACT_HEADS, None))
        k = nn.with_logical_constraint(k, (BATCH, LENGTH, ACT_KV_HEADS, None))
        v = nn.with_logical_constraint(v, (BATCH, LENGTH, ACT_KV_HEADS, None))
        if attend is None:
            attend = functools.partial(
                attention, impl=cfg.attention_impl, causal=True, segment_ids=segment_ids, branch_ids=branch_ids
            )
        out = attend(q, k, v)
        out = nn.with_logical_constraint(out, (BATCH, LENGTH, ACT_HEADS, None))
        d_o = lora.delta(self, cfg.lora, "o", out, ("heads", "head_dim"), ("embed",), (D,), dt)
        if cpu_tuned:
            out = (out.reshape(B * T, N * H) @ wo.astype(dt).reshape(N * H, D)).reshape(B, T, D)
        else:
            out = jnp.einsum("BTNH,NHD->BTD", out, wo.astype(dt))
        if d_o is not None:
            out = out + d_o
        if cfg.o_bias:
            out = out + _param(self, "o_bias", (D,), ("embed",), nn.initializers.zeros, pdt).astype(dt)
        return out


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):  # [B, T, D] -> [B, T, D]
        cfg = self.cfg
        D, F = cfg.hidden_size, cfg.intermediate_size
        pdt, dt = dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
        w_gate = _param(self, "gate_proj", (D, F), ("embed", "mlp"), _normal(D), pdt)
        w_up = _param(self, "up_proj", (D, F), ("embed", "mlp"), _normal(D), pdt)
        w_down = _param(self, "down_proj", (F, D), ("mlp", "embed"), _normal(F), pdt)
        B, T, _ = x.shape
        if cfg.lora is not None and {"gate", "up", "down"} & set(cfg.lora.targets):  # adapters on the MLP
            return self._with_adapters(x, w_gate, w_up, w_down, dt)
        if not backend.cpu_tuned(cfg.math_impl):
            gate = jnp.einsum("BTD,DF->BTF", x, w_gate.astype(dt))
            up = jnp.einsum("BTD,DF->BTF", x, w_up.astype(dt))
            h = nn.with_logical_constraint(jax.nn.silu(gate) * up, (BATCH, LENGTH, ACT_MLP))
            return jnp.einsum("BTF,FD->BTD", h, w_down.astype(dt))
        # All 2-D over B*T rows (see Attention); the [B*T, F] activation also stays 2-D: XLA:CPU runs the
        # silu-gate fusion and its gradient ~8% slower through a [B, T, F] reshape. The rows are batch-major
        # and `act_length` is never sharded, so the batch sharding carries over to the merged axis.
        x2 = x.reshape(B * T, D)
        h = jax.nn.silu(x2 @ w_gate.astype(dt)) * (x2 @ w_up.astype(dt))
        h = nn.with_logical_constraint(h, (BATCH, ACT_MLP))
        return (h @ w_down.astype(dt)).reshape(B, T, D)

    def _with_adapters(self, x, w_gate, w_up, w_down, dt):
        # The plain einsum path plus each adapter's low-rank term (models.lora.delta).
        cfg = self.cfg
        F = cfg.intermediate_size
        gate = jnp.einsum("BTD,DF->BTF", x, w_gate.astype(dt))
        up = jnp.einsum("BTD,DF->BTF", x, w_up.astype(dt))
        for target in ("gate", "up"):
            d = lora.delta(self, cfg.lora, target, x, ("embed",), ("mlp",), (F,), dt)
            if d is not None:
                gate, up = (gate + d, up) if target == "gate" else (gate, up + d)
        h = nn.with_logical_constraint(jax.nn.silu(gate) * up, (BATCH, LENGTH, ACT_MLP))
        out = jnp.einsum("BTF,FD->BTD", h, w_down.astype(dt))
        d = lora.delta(self, cfg.lora, "down", h, ("mlp",), ("embed",), (cfg.hidden_size,), dt)
        return out if d is None else out + d


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, branch_ids=None, attend=None):  # x [B, T, D] -> [B, T, D]
        cfg = self.cfg
        pdt = dtype_of(cfg.param_dtype)
        h = RMSNorm(cfg.rms_norm_eps, pdt, name="input_layernorm")(x)
        x = x + Attention(cfg, name="self_attn")(h, positions, segment_ids, branch_ids, attend)
        h = RMSNorm(cfg.rms_norm_eps, pdt, name="post_attention_layernorm")(x)
        x = x + MLP(cfg, name="mlp")(h)
        return nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))


class _ScannedLayer(DecoderLayer):
    """`nn.scan` wants (carry, x) -> (carry, y)."""

    @nn.compact
    def __call__(self, x, positions, segment_ids, branch_ids=None):
        return super().__call__(x, positions, segment_ids, branch_ids), None


class Transformer(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        pdt = dtype_of(cfg.param_dtype)
        self.embed_tokens = self.param(
            "embed_tokens",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02), ("vocab", "embed")),
            (cfg.vocab_size, cfg.hidden_size),
            pdt,
        )
        self.norm = RMSNorm(cfg.rms_norm_eps, pdt)
        if not cfg.tie_word_embeddings:
            self.lm_head = self.param(
                "lm_head",
                nn.with_logical_partitioning(_normal(cfg.hidden_size), ("embed", "vocab")),
                (cfg.hidden_size, cfg.vocab_size),
                pdt,
            )
        layer_cls = _ScannedLayer if cfg.scan_layers else DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=_remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            self.layers = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
        else:
            self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]

    def embed(self, tokens):  # [B, T] int32 -> [B, T, D] in the compute dtype
        x = jnp.take(self.embed_tokens, tokens, axis=0).astype(dtype_of(self.cfg.dtype))
        return nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))

    def hidden_states(self, tokens, positions, segment_ids, branch_ids=None):  # [B, T] -> [B, T, D] (final-normed)
        x = self.embed(tokens)
        if self.cfg.scan_layers:
            x, _ = self.layers(x, positions, segment_ids, branch_ids)
        else:
            for layer in self.layers:
                x = layer(x, positions, segment_ids, branch_ids)
        return self.norm(x)

    def logits(self, h):  # [B, T, D] -> float32 [B, T, V]
        dt = dtype_of(self.cfg.dtype)
        if self.cfg.tie_word_embeddings:
            out = jnp.einsum("BTD,VD->BTV", h, self.embed_tokens.astype(dt), preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("BTD,DV->BTV", h, self.lm_head.astype(dt), preferred_element_type=jnp.float32)
        return nn.with_logical_constraint(out, (BATCH, LENGTH, ACT_VOCAB))

    def head(self, x):  # last layer's output [B, T, D] -> float32 [B, T, V]: final norm, then the LM head
        return self.logits(self.norm(x))

    def __call__(self, tokens, positions, segment_ids):
        return self.logits(self.hidden_states(tokens, positions, segment_ids))
