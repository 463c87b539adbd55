"""Decode attention as a Pallas kernel: one new query per row against a KV cache, grouped heads, per-row
valid ranges. Row b sees cache slots [kv_start[b], kv_end) (left padding before kv_start, empty slots from
kv_end on); `reference.decode_attention_reference` is the definition the kernel is tested against
(tests/test_infer_decode_attention.py, interpret mode on CPU).

Status: exercised in interpret mode only (this project's CI has no accelerator); `infer.generate` uses
it when asked (`decode_attention="pallas"`), XLA attention otherwise.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from oyster_jax.kernels.decode_attention.kernel import decode_kernel


@functools.partial(jax.jit, static_argnames=("block_k", "sm_scale", "interpret"))
def decode_attention(
    q: jax.Array,  # [B, N, H]
    k: jax.Array,  # [B, S, K, H]
    v: jax.Array,  # [B, S, K, H]
    kv_start: jax.Array,  # [B] int32
    kv_end,  # int32 scalar (the same for every row, as in `infer`) or [B]
    *,
    block_k: int | None = None,
    sm_scale: float | None = None,
    interpret: bool = False,
) -> jax.Array:  # [B, N, H]
    B, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != H or N % K:
        raise ValueError(f"decode_attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit [B,N,H] / [B,S,K,H]")
    G = N // K
    Gp = max(8, 1 << (G - 1).bit_length())  # a power-of-two tile of query heads
    block_k = block_k or math.gcd(S, 128)
    if S % block_k:
        raise ValueError(f"decode_attention: cache length {S} is not a multiple of block_k={block_k}")
    sm_scale = H**-0.5 if sm_scale is None else sm_scale
    qg = q.reshape(B, K, G, H)
    if Gp != G:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, Gp - G), (0, 0)))
    end = jnp.broadcast_to(jnp.asarray(kv_end, jnp.int32), (B,))
    bounds = jnp.stack([kv_start.astype(jnp.int32), end], axis=1)  # [B, 2]
    out = pl.pallas_call(
        functools.partial(decode_kernel, block_k=block_k, sm_scale=sm_scale),
        grid=(B, K),
        in_specs=[
            pl.BlockSpec((B, 2), lambda b, h: (0, 0)),
            pl.BlockSpec((None, None, Gp, H), lambda b, h: (b, h, 0, 0)),
            pl.BlockSpec((None, S, None, H), lambda b, h: (b, 0, h, 0)),
            pl.BlockSpec((None, S, None, H), lambda b, h: (b, 0, h, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, Gp, H), lambda b, h: (b, h, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((B, K, Gp, H), q.dtype),
        interpret=interpret,
    )(bounds, qg, k, v)
    return out[:, :, :G].reshape(B, N, H)
