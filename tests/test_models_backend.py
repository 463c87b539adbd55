"""Backend-appropriate math (models/backend.py): the plain einsum + autodiff branch that TPU and GPU run and the
CPU-tuned branch (2-D projections, the LM head's hand-written backward) give the same values and gradients;
`auto` picks the CPU-tuned one on CPU only."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from oyster_jax import models
from oyster_jax.models import backend
from oyster_jax.models.config import ConfigError
from oyster_jax.train.head_logprobs import head_logprobs
from oyster_jax.train.step import target_logprobs
from tests import tolerances as tol

# Qwen2-like (biases) and Qwen3-like (q/k norm, untied head): every projection the layers have.
CASES = {
    "qwen3": models.ModelConfig(
        arch="qwen3", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, tie_word_embeddings=False,
    ),
    "qwen2": models.ModelConfig(
        arch="qwen2", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, qkv_bias=True, qk_norm=False, tie_word_embeddings=True,
    ),
}  # fmt: skip


def test_auto_is_cpu_tuned_on_cpu_only_and_forcing_wins():
    assert backend.cpu_tuned("auto", "cpu")
    for accelerator in ("gpu", "tpu", "cuda"):
        assert not backend.cpu_tuned("auto", accelerator)
        assert backend.cpu_tuned("cpu_tuned", accelerator)
    assert not backend.cpu_tuned("plain", "cpu")
    with pytest.raises(ConfigError, match=r"math_impl='fast': expected one of auto, plain, cpu_tuned"):
        models.ModelConfig(math_impl="fast")


def _loss_and_grads(cfg, params, tokens, seg, targets):
    def loss(p):
        h = models.hidden_states(cfg, p, tokens, segment_ids=seg)
        logp = target_logprobs(cfg, p, h, targets)
        return jnp.sum(logp * (seg > 0)), logp

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def _dot_shapes(cfg, params, tokens, seg):
    """Shapes of the left operand of every matmul in the forward pass."""
    jaxpr = jax.make_jaxpr(lambda p: models.hidden_states(cfg, p, tokens, segment_ids=seg))(params)
    shapes = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                shapes.append(tuple(eqn.invars[0].aval.shape))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return shapes


@pytest.mark.parametrize("case", sorted(CASES))
def test_plain_and_cpu_tuned_math_give_the_same_values_and_gradients(case):
    base = CASES[case]
    plain, tuned = base.replace(math_impl="plain"), base.replace(math_impl="cpu_tuned")
    params = models.init_params(base, jax.random.key(0))
    B, T = 2, 12
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, base.vocab_size)
    targets = jax.random.randint(jax.random.key(2), (B, T), 0, base.vocab_size)
    seg = jnp.asarray(np.array([[1] * 5 + [2] * 5 + [0] * 2, [1] * T], np.int32))

    # The branches really differ: the CPU layout multiplies [B*T, D] rows, the plain one [B, T, D] activations.
    D = base.hidden_size
    assert (B * T, D) in _dot_shapes(tuned, params, tokens, seg)
    assert (B * T, D) not in _dot_shapes(plain, params, tokens, seg)
    assert all(len(s) >= 3 for s in _dot_shapes(plain, params, tokens, seg) if s[-1] == D)

    (loss_p, logp_p), grads_p = _loss_and_grads(plain, params, tokens, seg, targets)
    (loss_t, logp_t), grads_t = _loss_and_grads(tuned, params, tokens, seg, targets)
    np.testing.assert_allclose(logp_t, logp_p, rtol=tol.FUSED_VS_AUTODIFF_F32, atol=tol.FUSED_VS_AUTODIFF_F32)
    np.testing.assert_allclose(loss_t, loss_p, rtol=tol.FUSED_VS_AUTODIFF_F32)
    for (path, gp), gt in zip(jax.tree_util.tree_leaves_with_path(grads_p), jax.tree.leaves(grads_t), strict=True):
        scale = max(float(jnp.max(jnp.abs(gp))), 1e-30)
        err = float(jnp.max(jnp.abs(gt - gp))) / scale
        assert err <= tol.FUSED_VS_AUTODIFF_F32, f"{jax.tree_util.keystr(path)}: {err:.3g}"
    assert float(jnp.max(jnp.abs(grads_p["layers_0"]["mlp"]["gate_proj"]))) > 1e-4  # real gradients


@pytest.mark.parametrize("math_impl", ["plain", "cpu_tuned"])
@pytest.mark.parametrize("lead", [(7,), (2, 5)])  # [M, D] (the shared-prompt fork positions) and [B, T, D]
def test_head_logprobs_of_both_branches_match_the_model_head(math_impl, lead):
    cfg = CASES["qwen3"].replace(math_impl=math_impl)
    params = models.init_params(cfg, jax.random.key(0))
    h = jax.random.normal(jax.random.key(1), lead + (cfg.hidden_size,)) * 2.0
    targets = jax.random.randint(jax.random.key(2), lead, 0, cfg.vocab_size)
    logits = models.logits_from_hidden(cfg, params, h.reshape(-1, 1, cfg.hidden_size)).reshape(lead + (-1,))
    want = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
    got = head_logprobs(cfg, params, h, targets)
    assert got.shape == lead
    np.testing.assert_allclose(got, want, rtol=tol.FUSED_VS_AUTODIFF_F32, atol=tol.FUSED_VS_AUTODIFF_F32)
    grad_jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(head_logprobs(cfg, p, h, targets))))(params))
    assert ("optimization_barrier" in grad_jaxpr) == (math_impl == "cpu_tuned")
