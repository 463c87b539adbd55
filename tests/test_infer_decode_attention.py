"""The Pallas decode-attention kernel (interpret mode) against its pure-JAX reference and the XLA cache
attention that generation uses; generation with it equals generation without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_fakes import random_params
from tolerances import KERNEL_BF16, KERNEL_F32

from oyster_jax import infer, models
from oyster_jax.infer.decoder import cached_attention
from oyster_jax.kernels.decode_attention import decode_attention, decode_attention_reference


def _inputs(B, N, K, H, S, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (B, N, H), dtype)
    k = jax.random.normal(keys[1], (B, S, K, H), dtype)
    v = jax.random.normal(keys[2], (B, S, K, H), dtype)
    return q, k, v


@pytest.mark.parametrize("N,K", [(10, 2), (6, 1)])  # G = 5 (padded to 8), 6 (MQA)
def test_kernel_matches_reference_f32(N, K):
    B, H, S = 3, 16, 64
    q, k, v = _inputs(B, N, K, H, S, jnp.float32)
    kv_start = jnp.array([0, 10, 37], jnp.int32)
    for kv_end in (jnp.int32(50), jnp.array([50, 64, 38], jnp.int32)):
        ref = decode_attention_reference(q, k, v, kv_start, kv_end)
        out = decode_attention(q, k, v, kv_start, kv_end, block_k=16, interpret=True)
        assert out.shape == (B, N, H) and out.dtype == q.dtype
        assert float(jnp.abs(out - ref).max()) <= KERNEL_F32


def test_reference_is_the_cache_attention_of_generation():
    B, N, K, H, S = 2, 8, 2, 16, 32
    q, k, v = _inputs(B, N, K, H, S, jnp.float32, seed=1)
    kv_start, slot = jnp.array([0, 7], jnp.int32), 20
    xla = cached_attention(q[:, None], k, v, jnp.array([slot], jnp.int32), kv_start)[:, 0]
    ref = decode_attention_reference(q, k, v, kv_start, slot + 1)
    np.testing.assert_allclose(np.asarray(xla), np.asarray(ref), atol=KERNEL_F32, rtol=0)
    # masked slots really are ignored: garbage there changes nothing
    k_dirty = k.at[1, :7].set(1e4).at[:, slot + 1 :].set(-1e4)
    out = decode_attention(q, k_dirty, v, kv_start, slot + 1, block_k=8, interpret=True)
    assert float(jnp.abs(out - ref).max()) <= KERNEL_F32


def test_kernel_bf16():
    q, k, v = _inputs(2, 8, 2, 32, 64, jnp.bfloat16, seed=2)
    kv_start = jnp.array([3, 0], jnp.int32)
    ref = decode_attention_reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), kv_start, 60)
    out = decode_attention(q, k, v, kv_start, 60, interpret=True)
    assert out.dtype == jnp.bfloat16
    assert float(jnp.abs(out.astype(jnp.float32) - ref).max()) <= KERNEL_BF16


def test_generation_with_the_kernel_equals_xla():
    cfg = models.ModelConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8
    )
    params = random_params(cfg, seed=4)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    ref = infer.generate(cfg, params, prompts, 8, eos_ids=[])
    assert infer.generate(cfg, params, prompts, 8, eos_ids=[], decode_attention="pallas") == ref
