"""The tiny Qwen3-architecture model (~5.0M params) used by the tests, `make demo` and the CPU benchmarks.

Vocabulary 4096 matches the bundled seed tokenizer (oyster_jax/data/seed/tokenizer.json).
Used by: `make demo` (configs/experiments/tiny_csa.py), `make test`,
`python -m oyster_jax.bench.train_step --config configs/experiments/tiny_csa.py`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "qwen3"
    c.vocab_size = 4096
    c.hidden_size = 256
    c.intermediate_size = 1024
    c.num_layers = 4
    c.num_heads = 4
    c.num_kv_heads = 2
    c.head_dim = 64
    c.rms_norm_eps = 1e-6
    c.rope_theta = 10_000.0
    c.max_position_embeddings = 2048
    c.tie_word_embeddings = True
    c.qkv_bias = False
    c.qk_norm = True
    c.bos_token_id = None
    c.eos_token_id = None
    c.pad_token_id = None
    return c
