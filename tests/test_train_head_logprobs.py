"""The LM head's hand-written backward (oyster_jax/train/head_logprobs.py) against plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oyster_jax import models
from oyster_jax.train import losses
from oyster_jax.train.head_logprobs import head_logprobs
from tests import tolerances as tol


@pytest.mark.parametrize("tied", [True, False])
def test_values_and_gradients_match_autodiff(tied):
    cfg = models.ModelConfig(
        arch="qwen3",
        vocab_size=97,
        hidden_size=24,
        intermediate_size=48,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=12,
        tie_word_embeddings=tied,
    )
    params = models.init_params(cfg, jax.random.key(0))
    h = jax.random.normal(jax.random.key(1), (3, 11, 24)) * 2.0  # logits of a few units, like a trained model
    targets = jax.random.randint(jax.random.key(2), (3, 11), 0, 97)
    weights = jax.random.uniform(jax.random.key(3), (3, 11))

    def reference(p, h):
        return jnp.sum(losses.token_logprobs(models.logits_from_hidden(cfg, p, h), targets) * weights)

    def fused(p, h):
        return jnp.sum(head_logprobs(cfg, p, h, targets) * weights)

    np.testing.assert_allclose(
        head_logprobs(cfg, params, h, targets),
        losses.token_logprobs(models.logits_from_hidden(cfg, params, h), targets),
        rtol=tol.FUSED_VS_AUTODIFF_F32,
        atol=tol.FUSED_VS_AUTODIFF_F32,
    )
    g_ref = jax.grad(reference, argnums=(0, 1))(params, h)
    g_new = jax.grad(fused, argnums=(0, 1))(params, h)
    for path, a, b in zip(
        jax.tree_util.tree_leaves_with_path(g_ref), jax.tree.leaves(g_ref), jax.tree.leaves(g_new), strict=True
    ):
        np.testing.assert_allclose(
            b, a, rtol=tol.FUSED_VS_AUTODIFF_F32, atol=tol.FUSED_VS_AUTODIFF_F32, err_msg=jax.tree_util.keystr(path[0])
        )
    # The head weight really gets a gradient (not a zero that would also "match" a broken reference).
    head = "embed_tokens" if tied else "lm_head"
    assert float(jnp.max(jnp.abs(g_new[0][head]))) > 1e-3


@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_chunked_log_probs_match_unchunked_for_any_length(chunk):
    from oyster_jax.train.step import target_logprobs

    cfg = models.ModelConfig(
        arch="qwen3", vocab_size=53, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
        num_kv_heads=1, head_dim=8,
    )  # fmt: skip
    params = models.init_params(cfg, jax.random.key(0))
    h = jax.random.normal(jax.random.key(1), (2, 13, 16))  # 13 tokens: not a multiple of any chunk here
    targets = jax.random.randint(jax.random.key(2), (2, 13), 0, 53)

    def total(p, h, c):
        return jnp.sum(target_logprobs(cfg, p, h, targets, c) * jnp.arange(13.0))

    np.testing.assert_allclose(
        target_logprobs(cfg, params, h, targets, chunk),
        target_logprobs(cfg, params, h, targets, 0),
        rtol=1e-5,
        atol=1e-5,
    )
    g_chunk = jax.grad(total, argnums=(0, 1))(params, h, chunk)
    g_full = jax.grad(total, argnums=(0, 1))(params, h, 0)
    for a, b in zip(jax.tree.leaves(g_chunk), jax.tree.leaves(g_full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
