"""The CPU-fused attention (`attention_impl="cpu_fused"`, kernels/fused_attention) equals the plain XLA attention
of `models.attention` and the pure-JAX reference, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oyster_jax.kernels.flash_attention import attention_reference
from oyster_jax.kernels.fused_attention import fused_attention
from oyster_jax.models.attention import xla_attention
from tests import tolerances as tol


def _branches(T):
    """Row 0: prompt (branch 0) | chosen (1) | rejected (2) | padding; row 1: one plain document."""
    a, b = T // 3, T // 3 + T // 4
    row0 = [0] * a + [1] * (b - a) + [2] * (T - b)
    return jnp.array([row0, [0] * T])


@pytest.mark.parametrize(
    "T,causal,segments,branches",
    [(16, False, False, False), (192, True, True, False), (384, True, True, False), (192, True, True, True)],
)  # T = 16: one block; 192 and 384: causal blocks of 64
def test_fused_attention_matches_reference(T, causal, segments, branches):
    B, N, K, H = 2, 4, 2, 8
    q, k, v, w = (
        jax.random.normal(jax.random.key(i), s)
        for i, s in enumerate([(B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)])
    )
    # Row 0: two packed documents then padding; row 1: one document.
    seg = jnp.array([[1] * (T - 10 - T // 3) + [2] * (T // 3) + [0] * 10, [1] * T]) if segments else None
    br = _branches(T) if branches else None
    kw = dict(causal=causal, segment_ids=seg, branch_ids=br)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, **kw) * w)

    out = fused_attention(q, k, v, **kw)
    np.testing.assert_allclose(out, xla_attention(q, k, v, **kw), atol=tol.KERNEL_F32)
    np.testing.assert_allclose(out, attention_reference(q, k, v, **kw), atol=tol.KERNEL_F32)
    got = jax.grad(loss(fused_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(xla_attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(attention_reference), argnums=(0, 1, 2))(q, k, v)
    for g, r, rr in zip(got, want, ref):
        np.testing.assert_allclose(g, r, atol=tol.KERNEL_F32)
        np.testing.assert_allclose(g, rr, atol=tol.KERNEL_F32)
        assert np.all(np.isfinite(np.asarray(g)))
    if segments:  # padding rows give zeros, as in the reference
        assert float(jnp.max(jnp.abs(out[0, -10:]))) == 0.0
