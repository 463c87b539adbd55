"""Generation sharded over an 8-device mesh like training gives the same tokens as on one device.

Needs 8 fake CPU devices: `make test` runs it in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import jax
import numpy as np
import pytest
from eval_fakes import random_params

from oyster_jax import infer, models
from oyster_jax.sharding import make_mesh

CFG = models.ModelConfig(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)


@pytest.mark.multidevice
@pytest.mark.parametrize("scan", [False, True])
def test_sharded_generation_matches_single_device(scan):
    cfg = CFG.replace(scan_layers=scan)
    params = random_params(cfg)  # stacked [L, ...] layers when scan
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (5, 11, 3)]
    ref = infer.generate(cfg, params, prompts, 10, eos_ids=[])
    sampled_ref = infer.generate(cfg, params, prompts, 10, temperature=1.0, top_k=20, seed=3, eos_ids=[])
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    sharded = infer.shard_params(cfg, params, mesh, "fsdp_tp")
    wq = sharded["layers"]["self_attn"]["q_proj"] if scan else sharded["layers_0"]["self_attn"]["q_proj"]
    assert wq.addressable_shards[0].data.shape != wq.shape  # really split, not replicated
    out = infer.generate(cfg, sharded, prompts, 10, eos_ids=[], mesh=mesh, rules="fsdp_tp")
    assert out == ref
    sampled = infer.generate(
        cfg, sharded, prompts, 10, temperature=1.0, top_k=20, seed=3, eos_ids=[], mesh=mesh, rules="fsdp_tp"
    )
    assert sampled == sampled_ref
    assert jax.device_count() == 8
