"""A ~25M-parameter Qwen3-architecture model for the CPU train-step benchmark at sequence 512.

Used by: `python -m oyster_jax.bench.train_step --model configs/models/bench_25m.py --seq 512`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "qwen3"
    c.vocab_size = 4096
    c.hidden_size = 512
    c.intermediate_size = 1408
    c.num_layers = 8
    c.num_heads = 8
    c.num_kv_heads = 4
    c.head_dim = 64
    c.rms_norm_eps = 1e-6
    c.rope_theta = 10_000.0
    c.max_position_embeddings = 4096
    c.tie_word_embeddings = True
    c.qkv_bias = False
    c.qk_norm = True
    return c
