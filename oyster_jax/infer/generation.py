"""Batched generation with a KV cache: one jitted prefill, then jitted decode loops (`lax.while_loop`).

    new_tokens = generate(cfg, params, [[1, 2, 3], [4, 5]], max_new_tokens=32)              # greedy
    new_tokens = generate(cfg, params, prompts, 64, temperature=0.7, top_p=0.9, seed=1)

Shapes are static and bucketed (batch, prompt length and the new-token budget are rounded up), so a
server or an eval loop compiles a handful of programs, not one per request. Prompts are left-padded
inside a bucket: every row then writes slot t at the same time and its RoPE positions start at 0 at its
first real token. Sampling parameters are traced, so changing them does not recompile.

Randomness is per row and step (`fold_in(fold_in(key(seed), row), step)`), so a row's sample does not
depend on the batch it shares or its padding. EOS ids stop a row inside the loop; stop strings need a
`decode_fn` and are checked on the host every `stop_check_every` tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from oyster_jax.infer.decoder import CACHE_AXES, KVCache, constrain, decode, init_cache
from oyster_jax.infer.sampling import choose_tokens, row_keys
from oyster_jax.kernels.decode_attention import decode_attention
from oyster_jax.models import check_params, param_shardings
from oyster_jax.models.config import ModelConfig
from oyster_jax.sharding import batch_sharding, resolve_rules


class GenerationError(ValueError):
    """Bad generation arguments (the message names the argument)."""


@dataclasses.dataclass(frozen=True)
class Generation:
    tokens: list[int]  # new tokens only; ends with the EOS token or the token completing a stop string
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    stop_string: str | None = None  # the stop string found, if any


# ------------------------------------------------------------------------------------------------
# Buckets
# ------------------------------------------------------------------------------------------------
def bucket_length(n: int, minimum: int = 16, linear_from: int = 1024) -> int:
    """Powers of two up to `linear_from`, then multiples of it (bounded waste for long prompts)."""
    n = max(n, minimum)
    if n <= linear_from:
        return 1 << (n - 1).bit_length()
    return -(-n // linear_from) * linear_from


def bucket_batch(n: int, multiple: int = 1) -> int:
    b = 1 << (max(n, 1) - 1).bit_length()
    return -(-b // multiple) * multiple


# ------------------------------------------------------------------------------------------------
# Jitted programs
# ------------------------------------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _State:
    cache: KVCache  # [L, B, S, K, H]
    out: jax.Array  # [B, M] int32 new tokens (pad after a row is done)
    n: jax.Array  # int32 scalar: tokens generated so far (same for every row)
    done: jax.Array  # [B] bool


@dataclasses.dataclass(frozen=True)
class _Static:
    cfg: ModelConfig
    cache_len: int  # S = P + M
    max_new_bucket: int  # M
    pad_id: int
    mesh: Mesh | None
    rules: tuple | None
    decode_attention: str


@dataclasses.dataclass(frozen=True)
class _Dynamic:
    """Per-call values that are traced, so they never cause a recompile."""

    kv_start: jax.Array  # [B] int32 first real slot of each row
    lengths: jax.Array  # [B] int32 prompt lengths
    rows: jax.Array  # [B] int32 row ids for the random keys
    seed_key: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    eos: jax.Array  # [E] int32, -1 = unused


jax.tree_util.register_dataclass(_Dynamic, data_fields=[f.name for f in dataclasses.fields(_Dynamic)], meta_fields=[])


def _decode_attention_fn(name: str):
    if name == "xla":
        return None
    if name == "pallas":
        return functools.partial(decode_attention, interpret=jax.default_backend() == "cpu")
    raise GenerationError(f"decode_attention={name!r}: expected 'xla' or 'pallas'")


def _choose(st: _Static, dyn: _Dynamic, logits, step):
    keys = row_keys(dyn.seed_key, dyn.rows, step)
    return choose_tokens(logits, keys, dyn.temperature, dyn.top_k, dyn.top_p)


def _is_eos(tokens, eos):  # [B], [E] -> [B] bool
    return jnp.any(tokens[:, None] == eos[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("st",))
def _prefill(st: _Static, params, tokens, dyn: _Dynamic, max_new) -> _State:
    """tokens [B, P] left-padded -> state holding the first new token."""
    B, P = tokens.shape
    cache = init_cache(st.cfg, B, st.cache_len)
    cache = KVCache(*(constrain(c, CACHE_AXES, st.mesh, st.rules) for c in (cache.k, cache.v)))
    slots = jnp.arange(P, dtype=jnp.int32)[None]
    positions = jnp.maximum(slots - dyn.kv_start[:, None], 0)
    logits, cache = decode(st.cfg, params, tokens, positions, cache, 0, dyn.kv_start, mesh=st.mesh, rules=st.rules)
    first = _choose(st, dyn, logits, 0)
    done = (dyn.lengths == 0) | _is_eos(first, dyn.eos) | (max_new <= 1)  # lengths 0 = batch padding
    out = jnp.full((B, st.max_new_bucket), st.pad_id, jnp.int32).at[:, 0].set(first)
    return _State(cache, out, jnp.int32(1), done)


@functools.partial(jax.jit, static_argnames=("st",), donate_argnames=("state",))
def _decode_until(st: _Static, params, state: _State, dyn: _Dynamic, limit) -> _State:
    """Decode until `limit` tokens have been generated or every row is done."""
    P = st.cache_len - st.max_new_bucket
    attn = _decode_attention_fn(st.decode_attention)

    def cond(s: _State):
        return (s.n < limit) & ~jnp.all(s.done)

    def body(s: _State):
        prev = jax.lax.dynamic_index_in_dim(s.out, s.n - 1, axis=1)  # [B, 1]
        positions = (dyn.lengths + s.n - 1)[:, None]
        logits, cache = decode(
            st.cfg,
            params,
            prev,
            positions,
            s.cache,
            P + s.n - 1,
            dyn.kv_start,
            mesh=st.mesh,
            rules=st.rules,
            decode_attention=attn,
        )
        tok = jnp.where(s.done, st.pad_id, _choose(st, dyn, logits, s.n))
        out = jax.lax.dynamic_update_index_in_dim(s.out, tok[:, None], s.n, axis=1)
        return _State(cache, out, s.n + 1, s.done | _is_eos(tok, dyn.eos))

    return jax.lax.while_loop(cond, body, state)


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _param_shardings(cfg: ModelConfig, mesh: Mesh, rules: tuple):
    return param_shardings(cfg, mesh, rules)


def shard_params(cfg: ModelConfig, params, mesh: Mesh, rules=None):
    """Place params on `mesh` with the training rules (a no-op for params already placed that way)."""
    return jax.device_put(params, _param_shardings(cfg, mesh, resolve_rules(rules)))


def _eos_list(cfg: ModelConfig, eos_ids) -> list[int]:
    if eos_ids is None:
        eos_ids = cfg.eos_token_id
    if eos_ids is None:
        return []
    if isinstance(eos_ids, int):
        return [eos_ids]
    return [int(e) for e in eos_ids]


def _validate(cfg, prompt_tokens, max_new_tokens, temperature, top_k, top_p, stop_strings, decode_fn):
    if not isinstance(prompt_tokens, Sequence) or isinstance(prompt_tokens, str | bytes):
        raise GenerationError("prompt_tokens must be a list of token-id lists")
    for i, row in enumerate(prompt_tokens):
        if len(row) == 0:
            raise GenerationError(f"prompt_tokens[{i}] is empty")
        bad = [t for t in row if not 0 <= int(t) < cfg.vocab_size]
        if bad:
            raise GenerationError(f"prompt_tokens[{i}] has ids outside [0, {cfg.vocab_size}): {bad[:5]}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0):
        raise GenerationError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise GenerationError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise GenerationError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if stop_strings and decode_fn is None:
        raise GenerationError("stop_strings need decode_fn (token ids -> text)")


def _first_stop(tokens: list[int], stop_strings: Sequence[str], decode_fn) -> tuple[int, str] | None:
    """Smallest j such that decode(tokens[:j]) contains a stop string (binary search: containment only
    grows with the prefix), and which string it was."""
    text = decode_fn(tokens)
    if not any(s in text for s in stop_strings):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in decode_fn(tokens[:mid]) for s in stop_strings):
            hi = mid
        else:
            lo = mid + 1
    text = decode_fn(tokens[:lo])
    found = min((text.find(s), s) for s in stop_strings if s in text)[1]
    return lo, found


def _group_rows(lengths: list[int], batch_size: int | None, max_batch_tokens: int | None) -> list[list[int]]:
    """Row indices per compiled call. One call when it fits; otherwise rows sorted by length (less padding)
    and packed so that each call has <= batch_size rows and a padded prefill of <= max_batch_tokens
    tokens (the prefill's attention scores grow with that)."""
    n = len(lengths)

    def fits(count: int, longest: int) -> bool:
        if batch_size is not None and count > batch_size:
            return False
        return max_batch_tokens is None or bucket_batch(count) * bucket_length(longest) <= max_batch_tokens

    if fits(n, max(lengths)):
        return [list(range(n))]
    groups, current = [], []
    for i in sorted(range(n), key=lambda i: lengths[i]):
        if current and not fits(len(current) + 1, lengths[i]):
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    return groups


def generate_full(
    cfg: ModelConfig,
    params,
    prompt_tokens: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: int | Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    decode_fn: Callable[[list[int]], str] | None = None,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    pad_id: int = 0,
    mesh: Mesh | None = None,
    rules=None,
    decode_attention: str = "xla",
    stop_check_every: int = 16,
    max_batch_tokens: int | None = 65536,
) -> list[Generation]:
    """Like `generate`, with the finish reason of every row."""
    _validate(cfg, prompt_tokens, max_new_tokens, temperature, top_k, top_p, stop_strings, decode_fn)
    check_params(cfg, params)
    prompts = [[int(t) for t in row] for row in prompt_tokens]
    if not prompts:
        return []
    eos = _eos_list(cfg, eos_ids)
    groups = _group_rows([len(p) for p in prompts], batch_size, max_batch_tokens)
    resolved_rules = None
    multiple = 1
    if mesh is not None:
        resolved_rules = resolve_rules(rules)
        params = shard_params(cfg, params, mesh, resolved_rules)
        multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    st_common = dict(
        cfg=cfg,
        pad_id=pad_id,
        mesh=mesh,
        rules=resolved_rules,
        decode_attention=decode_attention,
    )
    results: list[Generation | None] = [None] * len(prompts)
    for group in groups:
        for i, gen in zip(
            group,
            _generate_group(
                [prompts[i] for i in group],
                group,
                st_common,
                params,
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                eos,
                stop_strings,
                decode_fn,
                seed,
                multiple,
                stop_check_every,
            ),
        ):
            results[i] = gen
    return results


def _generate_group(
    prompts, row_ids, st_common, params, max_new, temperature, top_k, top_p, eos, stop_strings, decode_fn, seed,
    multiple, stop_check_every,
) -> list[Generation]:  # fmt: skip
    n_rows = len(prompts)
    B = bucket_batch(n_rows, multiple)
    P = bucket_length(max(len(p) for p in prompts))
    M = bucket_length(max_new)
    tokens = np.full((B, P), st_common["pad_id"], np.int32)
    lengths = np.zeros((B,), np.int32)
    for r, row in enumerate(prompts):
        tokens[r, P - len(row) :] = row
        lengths[r] = len(row)
    rows = np.zeros((B,), np.int32)
    rows[:n_rows] = row_ids
    eos_arr = np.full((max(4, -(-len(eos) // 4) * 4),), -1, np.int32)
    eos_arr[: len(eos)] = eos
    st = _Static(cache_len=P + M, max_new_bucket=M, **st_common)
    dyn = _Dynamic(
        kv_start=jnp.asarray(P - lengths, jnp.int32),
        lengths=jnp.asarray(lengths),
        rows=jnp.asarray(rows),
        seed_key=jax.random.key(seed),
        temperature=jnp.float32(temperature),
        top_k=jnp.int32(top_k or 0),
        top_p=jnp.float32(1.0 if top_p is None else top_p),
        eos=jnp.asarray(eos_arr),
    )
    tokens = jnp.asarray(tokens)
    if st.mesh is not None:
        tokens = jax.device_put(tokens, batch_sharding(st.mesh))
    state = _prefill(st, params, tokens, dyn, jnp.int32(max_new))
    stopped: dict[int, tuple[int, str]] = {}
    while True:
        limit = max_new if not stop_strings else min(max_new, int(state.n) + stop_check_every)
        state = _decode_until(st, params, state, dyn, jnp.int32(limit))
        n = int(state.n)
        done = np.asarray(state.done).copy()
        if stop_strings:
            out = np.asarray(state.out)
            for r in range(n_rows):
                if done[r] or r in stopped:
                    continue
                hit = _first_stop(out[r, :n].tolist(), stop_strings, decode_fn)
                if hit is not None:
                    stopped[r] = hit
                    done[r] = True
            state = dataclasses.replace(state, done=jnp.asarray(done))
        if n >= max_new or done[:n_rows].all():
            break
    out = np.asarray(state.out)[:, :n]
    results = []
    eos_set = set(eos)
    for r in range(n_rows):
        row = out[r].tolist()
        if r in stopped:
            cut, s = stopped[r]
            results.append(Generation(row[:cut], "stop", s))
            continue
        end = next((j for j, t in enumerate(row) if t in eos_set), None)
        if end is not None:
            results.append(Generation(row[: end + 1], "stop"))
        else:
            results.append(Generation(row, "length"))
    return results


def generate(
    cfg: ModelConfig,
    params,
    prompt_tokens: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_ids: int | Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    decode_fn: Callable[[list[int]], str] | None = None,
    seed: int = 0,
    **kwargs,
) -> list[list[int]]:
    """New tokens for each prompt (the EOS token, or the one completing a stop string, included).

    `eos_ids` None uses `cfg.eos_token_id`; pass [] for none. Keyword options (see `generate_full`):
    `batch_size` / `max_batch_tokens` (split a large list into length-sorted calls), `pad_id`,
    `mesh` / `rules` (shard like training), `decode_attention` ("xla" | "pallas"), `stop_check_every`.
    """
    return [
        g.tokens
        for g in generate_full(
            cfg,
            params,
            prompt_tokens,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            eos_ids,
            stop_strings,
            decode_fn,
            seed,
            **kwargs,
        )
    ]
