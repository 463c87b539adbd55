"""Functional entry points over the Linen `Transformer`: params are a plain pytree of arrays."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from oyster_jax.models.config import ModelConfig
from oyster_jax.models.transformer import Transformer
from oyster_jax.sharding import tree_shardings


def default_positions(tokens: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """[B, T] positions: 0..T-1, or restarting at 0 at every segment boundary of a packed row."""
    B, T = tokens.shape
    idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    if segment_ids is None:
        return idx
    starts = jnp.concatenate([jnp.ones((B, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - start_idx


def _inputs(tokens, positions, segment_ids):
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be int32 [B, T]; got shape {tokens.shape}")
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
        if segment_ids.shape != tokens.shape:
            raise ValueError(f"segment_ids shape {segment_ids.shape} != tokens shape {tokens.shape}")
    if positions is None:
        positions = default_positions(tokens, segment_ids)
    positions = jnp.asarray(positions, jnp.int32)
    if positions.shape != tokens.shape:
        raise ValueError(f"positions shape {positions.shape} != tokens shape {tokens.shape}")
    return tokens, positions, segment_ids


def forward(cfg: ModelConfig, params, tokens, positions=None, segment_ids=None) -> jax.Array:
    """tokens int32 [B, T] -> float32 logits [B, T, V].

    `segment_ids` [B, T] (0 = padding) confines attention to each packed document; when `positions` is
    None they restart at 0 at every segment boundary.
    """
    tokens, positions, segment_ids = _inputs(tokens, positions, segment_ids)
    return Transformer(cfg).apply({"params": params}, tokens, positions, segment_ids)


def hidden_states(
    cfg: ModelConfig, params, tokens, positions=None, segment_ids=None, branch_ids=None, dropout_rng=None
) -> jax.Array:
    """Final-normed hidden states [B, T, D] in the compute dtype (for chunked losses over large vocabs).

    `dropout_rng` turns on the dropout of LoRA adapters (`cfg.lora.dropout`); the base has no dropout."""
    tokens, positions, segment_ids = _inputs(tokens, positions, segment_ids)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return Transformer(cfg).apply(
        {"params": params}, tokens, positions, segment_ids, branch_ids, method=Transformer.hidden_states, rngs=rngs
    )


def logits_from_hidden(cfg: ModelConfig, params, h: jax.Array) -> jax.Array:
    """[B, T, D] hidden states -> float32 [B, T, V] logits."""
    return Transformer(cfg).apply({"params": params}, h, method=Transformer.logits)


def _init_boxed(cfg: ModelConfig, rng):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Transformer(cfg).init(rng, tokens, tokens, None)["params"]


def init_params(cfg: ModelConfig, rng) -> dict:
    """Random parameters (plain arrays, no partitioning boxes)."""
    return nn.meta.unbox(_init_boxed(cfg, rng))


def abstract_params(cfg: ModelConfig) -> dict:
    """jax.ShapeDtypeStruct for every parameter, without allocating anything."""
    return nn.meta.unbox(jax.eval_shape(lambda: _init_boxed(cfg, jax.random.key(0))))


@functools.lru_cache(maxsize=8)
def _param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): s.shape for path, s in flat}


def check_params(cfg: ModelConfig, params) -> None:
    """Raise ValueError naming every tensor that is missing, unexpected or mis-shaped for `cfg`.

    Linen's `apply` ignores tensors the model does not use, so params from another model (or a converter
    that grew a tensor) would otherwise run silently with part of their weights dropped."""
    want = _param_shapes(cfg)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    have = {jax.tree_util.keystr(path, simple=True, separator="/"): jnp.shape(x) for path, x in flat}
    problems = [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    problems += [f"missing {k}" for k in sorted(set(want) - set(have))]
    shared = sorted(set(want) & set(have))
    problems += [f"{k}: shape {have[k]}, expected {want[k]}" for k in shared if have[k] != want[k]]
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ValueError(f"params do not match the model config: {'; '.join(problems[:8])}{more}")


def logical_axes(cfg: ModelConfig) -> dict:
    """Logical axis names (a PartitionSpec of names) for every parameter."""
    return nn.get_partition_spec(jax.eval_shape(lambda: _init_boxed(cfg, jax.random.key(0))))


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh, rules=None) -> dict:
    """NamedSharding for every parameter of `cfg`, from its logical axes and the sharding `rules`."""
    return tree_shardings(logical_axes(cfg), abstract_params(cfg), mesh, rules)
