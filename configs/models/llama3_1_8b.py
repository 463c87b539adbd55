"""Llama-3.1-8B: Llama 3 architecture with llama3 RoPE scaling (architecture only; weights from a path).

`python -m oyster_jax.tools.aot --config configs/models/llama3_1_8b.py --mesh data=1,fsdp=4,tensor=2`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "llama"
    c.vocab_size = 128256
    c.hidden_size = 4096
    c.intermediate_size = 14336
    c.num_layers = 32
    c.num_heads = 32
    c.num_kv_heads = 8
    c.head_dim = 128
    c.rms_norm_eps = 1e-5
    c.rope_theta = 500_000.0
    c.rope_scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    c.max_position_embeddings = 131072
    c.tie_word_embeddings = False
    c.qkv_bias = False
    c.qk_norm = False
    c.bos_token_id = 128000
    c.eos_token_id = (128001, 128008, 128009)
    return c
