"""`make demo`: the tiny Qwen3-architecture model (~5.0M params) trained from scratch on the bundled seed
data — constructive SFT, then ORPO — on 2 CPU cores.

    python -m oyster_jax.main --config configs/experiments/tiny_csa.py --workdir runs/tiny
    python -m oyster_jax.demo --workdir runs/demo            # the same run + held-out eval + HF export + report

Hardware: 2 CPU cores. Expected: held-out preference accuracy (mean completion log-prob, chosen >
rejected, 384 pairs of held-out template families) rises by >= 0.20 over ORPO to >= 0.90; see
runs/demo/report.md.
"""

from oyster_jax.train.config import base_config, model_fields


def get_config():
    c = base_config()
    c.model = model_fields("tiny")
    c.stages = "sft,pref"
    c.mesh = "data=1,fsdp=-1,tensor=1"
    c.data.seq_len = 256
    c.data.pref_seq_len = 256

    c.sft.num_steps = 150
    c.sft.batch_size = 16
    c.sft.learning_rate = 2e-3
    c.sft.warmup_steps = 15
    c.sft.weight_decay = 0.01

    c.pref.loss = "orpo"
    c.pref.num_steps = 100
    c.pref.batch_size = 8  # pairs
    c.pref.learning_rate = 1e-3
    c.pref.warmup_steps = 10
    c.pref.orpo_lambda = 0.1

    c.checkpoint.every_steps = 50
    c.checkpoint.keep = 2
    return c
