"""The tiny model with attention_impl="pallas" (flash kernels, interpreted on CPU) against "xla":
same logits and same parameter gradients, on packed rows with padding."""

import jax
import jax.numpy as jnp
import numpy as np

from oyster_jax import models
from tests.tolerances import KERNEL_F32


def test_tiny_model_pallas_matches_xla():
    # Layers scanned and rematerialized: the kernels' custom VJP must work under nn.scan and nn.remat.
    overrides = dict(num_layers=2, scan_layers=True, remat_policy="full")
    cfg_xla = models.model_config_from_file("tiny", attention_impl="xla", **overrides)
    cfg_pallas = models.model_config_from_file("tiny", attention_impl="pallas", **overrides)
    params = models.init_params(cfg_xla, jax.random.PRNGKey(0))
    B, T = 2, 37  # T not a multiple of any block
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, cfg_xla.vocab_size)
    # Row 0: three packed documents then padding; row 1: one document with trailing padding.
    seg = np.zeros((B, T), np.int32)
    seg[0, :10], seg[0, 10:22], seg[0, 22:33] = 1, 2, 3
    seg[1, :30] = 1
    seg = jnp.asarray(seg)
    weights = jax.random.normal(jax.random.PRNGKey(2), (B, T, cfg_xla.vocab_size)) * (seg > 0)[..., None]

    def run(cfg):
        def loss(params):
            logits = models.forward(cfg, params, tokens, segment_ids=seg)
            return jnp.sum(logits * weights) / T, logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return logits, grads

    logits_x, grads_x = run(cfg_xla)
    logits_p, grads_p = run(cfg_pallas)
    real = np.asarray(seg) > 0  # padding positions are not compared: the model may treat them freely
    np.testing.assert_allclose(np.asarray(logits_p)[real], np.asarray(logits_x)[real], rtol=KERNEL_F32, atol=KERNEL_F32)
    flat_x = jax.tree_util.tree_leaves_with_path(grads_x)
    flat_p = jax.tree_util.tree_leaves(grads_p)
    assert len(flat_x) == len(flat_p)
    for (path, gx), gp in zip(flat_x, flat_p):
        # A gradient entry is a sum of many products (the tied embedding's of every position), so its
        # rounding error scales with the largest entries of the tensor, not with itself.
        err = float(jnp.max(jnp.abs(gp - gx)) / jnp.max(jnp.abs(gx)))
        assert err <= KERNEL_F32, f"{jax.tree_util.keystr(path)}: max|pallas - xla| / max|xla| = {err:.3g}"
