"""The fused attention used by the `xla` backend equals the reference `xla_attention`, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oyster_jax.models.attention import xla_attention
from oyster_jax.models.attention_fused import fused_attention
from tests import tolerances as tol


@pytest.mark.parametrize(
    "T,causal,segments",
    [(16, False, False), (192, True, True), (384, True, True)],
)  # T = 16: one block; 192 and 384: causal blocks of 64
def test_fused_attention_matches_reference(T, causal, segments):
    B, N, K, H = 2, 4, 2, 8
    q, k, v, w = (
        jax.random.normal(jax.random.key(i), s)
        for i, s in enumerate([(B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)])
    )
    # Row 0: two packed documents then padding; row 1: one document.
    seg = jnp.array([[1] * (T - 10 - T // 3) + [2] * (T // 3) + [0] * 10, [1] * T]) if segments else None

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, causal=causal, segment_ids=seg) * w)

    np.testing.assert_allclose(
        fused_attention(q, k, v, causal=causal, segment_ids=seg),
        xla_attention(q, k, v, causal=causal, segment_ids=seg),
        atol=tol.KERNEL_F32,
    )
    got = jax.grad(loss(fused_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(xla_attention), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, atol=tol.KERNEL_F32)
    if segments:  # padding rows give zeros, as in the reference
        assert float(jnp.max(jnp.abs(fused_attention(q, k, v, causal=causal, segment_ids=seg)[0, -10:]))) == 0.0
