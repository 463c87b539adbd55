"""LoRA: low-rank adapters on the seven projections of every decoder layer, the base weights frozen.

    cfg = cfg.replace(lora=LoraConfig(rank=16, alpha=32.0))
    params = init_params(cfg, key)                 # base + adapters in one tree (forward takes it as it is)
    base, adapters = split(params)                 # the trainer keeps `base` frozen and trains `adapters`
    logits = forward(cfg, merge(base, adapters), tokens)
    logits_base = forward(without_adapters(cfg), base, tokens)     # the same model with the adapters off

A target projection W (ours: [*in_dims, *out_dims]) gets A [*in_dims, r] and B [r, *out_dims]; its output
becomes x·W + (alpha / r)·dropout(x)·A·B. A starts as PEFT's Kaiming-uniform, B at zero, so a fresh adapter
changes nothing. Adapters are float32 whatever the base's dtype, and carry the logical axes of the side of W
they share (A: W's input axes, B: W's output axes; the rank axis is replicated), so the sharding rules that
place W place its adapter too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# target -> (module inside a decoder layer, base parameter, number of input dims of the base weight)
TARGETS: dict[str, tuple[str, str, int]] = {
    "q": ("self_attn", "q_proj", 1),
    "k": ("self_attn", "k_proj", 1),
    "v": ("self_attn", "v_proj", 1),
    "o": ("self_attn", "o_proj", 2),
    "gate": ("mlp", "gate_proj", 1),
    "up": ("mlp", "up_proj", 1),
    "down": ("mlp", "down_proj", 1),
}
SUFFIX_A, SUFFIX_B = "_lora_a", "_lora_b"


class LoraConfigError(ValueError):
    """A LoRA setting we cannot honour; the message names the field."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(TARGETS)

    def __post_init__(self):
        targets = self.targets
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        targets = tuple(targets)
        bad = [t for t in targets if t not in TARGETS]
        if bad or not targets:
            raise LoraConfigError(f"lora.targets={list(targets)}: expected a non-empty subset of {list(TARGETS)}")
        object.__setattr__(self, "targets", tuple(t for t in TARGETS if t in targets))  # canonical order
        if int(self.rank) < 1:
            raise LoraConfigError(f"lora.rank={self.rank}: must be >= 1 (0 turns LoRA off)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise LoraConfigError(f"lora.dropout={self.dropout}: must be >= 0 and < 1")
        if not float(self.alpha) > 0:
            raise LoraConfigError(f"lora.alpha={self.alpha}: must be > 0")
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise LoraConfigError(f"unknown lora fields {unknown}")
        return cls(**d)


def _kaiming_uniform(fan_in: int):
    # PEFT's lora_A init (kaiming_uniform_ with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def delta(module: nn.Module, lora: LoraConfig | None, target: str, x, in_axes, out_axes, out_dims, dtype):
    """The adapter's addition to projection `target` for input x [B, T, *in_dims], or None when `target` has
    no adapter: (alpha / r) · dropout(x) · A · B as [B, T, *out_dims] in `dtype`. Creates A and B in `module`."""
    if lora is None or target not in lora.targets:
        return None
    _, name, n_in = TARGETS[target]
    in_dims = tuple(x.shape[2:])
    assert len(in_dims) == n_in, (target, x.shape)
    fan_in, fan_out, r = math.prod(in_dims), math.prod(out_dims), lora.rank
    a = module.param(
        name + SUFFIX_A,
        nn.with_logical_partitioning(_kaiming_uniform(fan_in), tuple(in_axes) + (None,)),
        in_dims + (r,),
        jnp.float32,
    )
    b = module.param(
        name + SUFFIX_B,
        nn.with_logical_partitioning(nn.initializers.zeros, (None,) + tuple(out_axes)),
        (r,) + tuple(out_dims),
        jnp.float32,
    )
    B, T = x.shape[:2]
    x2 = x.reshape(B * T, fan_in)
    if lora.dropout > 0 and module.has_rng("dropout"):
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - lora.dropout, x2.shape)
        x2 = jnp.where(keep, x2 / (1.0 - lora.dropout), 0).astype(x2.dtype)
    h = x2 @ a.reshape(fan_in, r).astype(dtype)
    out = (h @ b.reshape(r, fan_out).astype(dtype)) * jnp.asarray(lora.scaling, dtype)
    return out.reshape((B, T) + tuple(out_dims))


# ------------------------------------------------------------------------------------------------
# The parameter tree: base and adapters
# ------------------------------------------------------------------------------------------------


def is_adapter(name: str) -> bool:
    return name.endswith(SUFFIX_A) or name.endswith(SUFFIX_B)


def _partition(tree, keep_adapters: bool):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            sub = _partition(v, keep_adapters)
            if sub:
                out[k] = sub
        elif is_adapter(k) == keep_adapters:
            out[k] = v
    return out


def split(params: dict) -> tuple[dict, dict]:
    """A tree of base + adapters (or anything shaped like one: shardings, axes) -> (base, adapters)."""
    return _partition(params, False), _partition(params, True)


def merge(base: dict, adapters: dict) -> dict:
    """The inverse of `split`: one tree (new dicts, the arrays shared)."""
    out = dict(base)
    for k, v in adapters.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def without_adapters(cfg):
    """The ModelConfig of the base model (the same network with the adapters off)."""
    return cfg if getattr(cfg, "lora", None) is None else cfg.replace(lora=None)


def adapter_pairs(cfg, params: dict):
    """(layer path, module, base name, A, B) for every adapter of `params` (base + adapters, or adapters
    alone); with scan_layers, A and B carry a leading layer axis."""
    layers = [("layers",)] if cfg.scan_layers else [(f"layers_{i}",) for i in range(cfg.num_layers)]
    for path in layers:
        node = params
        for key in path:
            node = node[key]
        for target in cfg.lora.targets:
            module, name, _ = TARGETS[target]
            sub = node[module]
            yield path, module, name, sub[name + SUFFIX_A], sub[name + SUFFIX_B]


def merged_weights(cfg, params: dict) -> dict:
    """Base + adapters -> base parameters with every adapter folded in (W + (alpha/r)·A·B, in float32, then
    the base's dtype): the parameters of `without_adapters(cfg)`."""
    base, adapters = split(params)
    out = jax.tree.map(lambda x: x, base)  # fresh dicts
    for path, module, name, a, b in adapter_pairs(cfg, adapters):
        node = out
        for key in path:
            node = node[key]
        w = node[module][name]
        lead, r = (1 if cfg.scan_layers else 0), a.shape[-1]  # the layer axis of scanned layers
        a2 = jnp.reshape(a, a.shape[:lead] + (-1, r)).astype(jnp.float32)
        b2 = jnp.reshape(b, b.shape[: lead + 1] + (-1,)).astype(jnp.float32)
        d = jnp.einsum("...ir,...ro->...io", a2, b2) * cfg.lora.scaling
        node[module][name] = (w.astype(jnp.float32) + d.reshape(w.shape)).astype(w.dtype)
    return out


def fingerprint(params: dict, samples: int = 256) -> str:
    """A short, mesh-independent fingerprint of a parameter tree: names, shapes, dtypes and the exact bits of
    `samples` evenly spaced elements of every tensor (no reduction, so no rounding that depends on how the
    arrays are sharded). Two different checkpoints of one architecture differ in it with near certainty."""
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    picks = {}
    for path, x in flat:
        n = math.prod(x.shape)
        picks[jax.tree_util.keystr(path)] = np.unique(
            np.linspace(0, max(n - 1, 0), num=min(samples, n)).astype(np.int64)
        )

    @jax.jit
    def gather(tree):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: jnp.ravel(x)[picks[jax.tree_util.keystr(p)]].astype(jnp.float32), tree
        )

    values = jax.device_get(gather(params))
    for (path, x), (_, v) in zip(flat, jax.tree_util.tree_flatten_with_path(values)[0]):
        h.update(f"{jax.tree_util.keystr(path)}:{tuple(x.shape)}:{jnp.dtype(x.dtype).name};".encode())
        h.update(np.ascontiguousarray(v, np.float32).tobytes())
    return "sha256:" + h.hexdigest()[:32]
