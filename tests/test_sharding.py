"""Sharded loss/gradients equal the 1-device result; parameters really are split; 14B AOT compiles.

These need 8 fake CPU devices; `make test` runs them in their own process with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import SHARDED_VS_SINGLE_REL

from oyster_jax import models
from oyster_jax.models import param_shardings
from oyster_jax.sharding import batch_sharding, make_mesh, parse_mesh_spec, replicated, use_rules
from oyster_jax.tools import aot

CFG = models.ModelConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)


def next_token_loss(cfg, params, tokens, segment_ids):
    """Mean next-token cross-entropy over non-padding positions."""
    logits = models.forward(cfg, params, tokens, segment_ids=segment_ids)[:, :-1]
    weights = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1)


def test_parse_mesh_spec():
    assert parse_mesh_spec("data=2,tensor=2") == {"data": 2, "fsdp": 1, "tensor": 2}
    with pytest.raises(ValueError, match="bad entry"):
        parse_mesh_spec("pipeline=2")


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)
    seg = np.ones_like(tokens)
    seg[:, 10:] = 2
    seg[1, 13:] = 0
    return tokens, seg


@pytest.mark.multidevice
@pytest.mark.parametrize("scan,impl", [(False, "xla"), (True, "xla"), (True, "cpu_fused"), (True, "pallas")])
def test_sharded_loss_and_grads_match_single_device(scan, impl):
    # pallas: the kernel runs per shard under shard_map (interpreted on CPU)
    cfg = CFG.replace(scan_layers=scan, attention_impl=impl)
    params = models.init_params(cfg, jax.random.key(1))
    tokens, seg = _batch()
    loss_fn = jax.value_and_grad(functools.partial(next_token_loss, cfg))
    ref_loss, ref_grads = jax.jit(loss_fn)(params, tokens, seg)

    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    p_shard = param_shardings(cfg, mesh, "fsdp_tp")
    sharded_fn = jax.jit(
        loss_fn,
        in_shardings=(p_shard, batch_sharding(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), p_shard),
    )
    with use_rules(mesh, "fsdp_tp"):
        loss, grads = sharded_fn(jax.device_put(params, p_shard), tokens, seg)
        if impl == "pallas":  # the opaque kernel call must be split per shard, not gathered
            assert "shard_map" in str(jax.make_jaxpr(loss_fn)(params, tokens, seg))
    assert abs(float(loss) - float(ref_loss)) <= SHARDED_VS_SINGLE_REL * abs(float(ref_loss))
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        rel = float(jnp.linalg.norm(g - r) / jnp.maximum(jnp.linalg.norm(r), 1e-12))
        assert rel <= SHARDED_VS_SINGLE_REL, rel


@pytest.mark.multidevice
def test_flash_kernel_with_branches_runs_per_shard():
    """Shared-prompt rows (segment and branch ids) through the Pallas kernel under a mesh: both id arrays
    are split with the batch, and values and gradients equal the single-device xla path."""
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.standard_normal((4, 24, 4, 16)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((4, 24, 2, 16)), jnp.float32) for _ in range(2))
    seg = np.ones((4, 24), np.int32)
    seg[:, 20:] = 0
    branches = np.zeros((4, 24), np.int32)
    branches[:, 8:14], branches[:, 14:20] = 1, 2
    seg, branches = jnp.asarray(seg), jnp.asarray(branches)

    def loss(impl, q, k, v):
        out = models.attention(q, k, v, impl=impl, causal=True, segment_ids=seg, branch_ids=branches)
        return jnp.sum(out * jnp.cos(out))

    want, want_grads = jax.jit(jax.value_and_grad(functools.partial(loss, "xla"), argnums=(0, 1, 2)))(q, k, v)
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    fn = jax.jit(jax.value_and_grad(functools.partial(loss, "pallas"), argnums=(0, 1, 2)))
    with use_rules(mesh, "fsdp_tp"):
        got, grads = fn(*(jax.device_put(x, batch_sharding(mesh, 4)) for x in (q, k, v)))
        assert "shard_map" in str(jax.make_jaxpr(functools.partial(loss, "pallas"))(q, k, v))
    np.testing.assert_allclose(float(got), float(want), rtol=SHARDED_VS_SINGLE_REL)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(w), rtol=0, atol=SHARDED_VS_SINGLE_REL * float(jnp.max(jnp.abs(w)))
        )


@pytest.mark.multidevice
def test_parameters_are_split_over_fsdp_and_tensor():
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    params = jax.device_put(models.init_params(CFG, jax.random.key(0)), param_shardings(CFG, mesh, "fsdp_tp"))
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    per_device = {d: 0 for d in mesh.devices.flat}
    for x in jax.tree.leaves(params):
        for shard in x.addressable_shards:
            per_device[shard.device] += shard.data.nbytes
    worst = max(per_device.values())
    print(f"total param bytes {total}, max per device {worst} ({worst / total:.3f})")
    # norms (vectors over head_dim / embed) stay replicated over `tensor`: allow their few bytes on top of 1/4
    norm_bytes = sum(x.nbytes for p, x in jax.tree_util.tree_leaves_with_path(params) if "norm" in str(p))
    assert worst <= total / 4 + norm_bytes


@pytest.mark.multidevice
def test_qwen3_14b_aot_compiles_the_train_step_with_its_optimizer_state(capsys):
    """tools/aot.py compiles the trainer's step (params + AdamW moments, state donated) for the Qwen3-14B SFT
    recipe on 8 fake devices and prints the memory of the whole train state."""
    mesh = "data=1,fsdp=4,tensor=2"
    argv = ["--config", "configs/experiments/qwen3_14b_sft.py", "--mesh", mesh]
    argv += ["--config.sft.batch_size=4", "--config.data.seq_len=512", "--config.sft.logits_chunk=256"]
    assert aot.main(argv) == 0
    out = capsys.readouterr().out
    print(out)
    gib = lambda name: float(re.search(rf"{name}\s+([0-9.]+) GiB", out).group(1)) * 2**30
    cfg = models.model_config_from_file("configs/models/qwen3_14b.py")
    shards = 8  # every large matrix is split over fsdp x tensor
    params = cfg.num_params() * 4 / shards  # float32
    # Arguments hold the params and both Adam moments (f32): 3x the params, not the params alone.
    assert gib("argument_size_in_bytes") >= 0.99 * 3 * params
    assert gib("argument_size_in_bytes") < 1.05 * 3 * params
    state = re.search(r"train state\s+([0-9.]+) GiB\s+\(params ([0-9.]+) \+ optimizer state ([0-9.]+)", out)
    total, p, opt = (float(x) * 2**30 for x in state.groups())
    assert abs(p - params) < 0.02 * params and abs(opt - 2 * params) < 0.02 * 2 * params
    assert abs(total - gib("argument_size_in_bytes")) < 0.01 * total  # the batch is a few KiB
    assert "donated: True" in out
    assert gib("alias_size_in_bytes") > 0.99 * 3 * params  # the state is updated in place
    assert gib("temp_size_in_bytes") > 0
