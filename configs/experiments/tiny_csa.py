"""`make demo`: the tiny Qwen3-architecture model (~5.0M params) trained from scratch on the bundled seed
data — constructive SFT, then ORPO — on 2 CPU cores.

    python -m oyster_jax.main --config configs/experiments/tiny_csa.py --workdir runs/tiny
    python -m oyster_jax.demo --workdir runs/demo            # the same run + held-out eval + HF export + report

Recipe: a short SFT warm-up (25 steps of 16 packed rows: the chat format and the vocabulary of the seed
data), then ORPO (120 steps of 8 pairs). The SFT is short on purpose: on this templated seed data SFT alone
already teaches the preference (held-out accuracy 0.70 after 25 steps, 1.0 after 50), leaving nothing for
ORPO to show; `--config.sft.num_steps=150` trains the full SFT.

Hardware: 2 CPU cores. Expected: held-out preference accuracy (mean completion log-prob, chosen >
rejected, 384 pairs of held-out template families) rises from about 0.7 after SFT to >= 0.95 after ORPO;
see runs/demo/report.md.
"""

from oyster_jax.train.config import base_config, model_fields


def get_config():
    c = base_config()
    c.model = model_fields("tiny")
    c.stages = "sft,pref"
    c.mesh = "data=1,fsdp=-1,tensor=1"
    c.data.seq_len = 256
    c.data.pref_seq_len = 192  # the longest seed pair is 195 tokens: a few completions lose their last tokens
    # Prompt sharing: each pair runs as one row, prompt | chosen | rejected (same losses and gradients). The
    # longest seed training pair needs 258 tokens that way, against 2 x 192 as two rows.
    c.data.pref_shared_len = 264

    c.sft.num_steps = 25
    c.sft.batch_size = 16
    c.sft.learning_rate = 2e-3
    c.sft.warmup_steps = 5
    c.sft.weight_decay = 0.01

    c.pref.loss = "orpo"
    c.pref.num_steps = 120
    c.pref.batch_size = 8  # pairs
    c.pref.learning_rate = 1e-3
    c.pref.warmup_steps = 10
    c.pref.orpo_lambda = 0.1

    c.checkpoint.every_steps = 40
    c.checkpoint.keep = 2
    return c
