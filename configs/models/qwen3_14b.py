"""Qwen3-14B, the report's main base model (architecture only; weights from a Hugging Face directory).

AOT compile of forward+backward on an 8-device mesh without any weights:
`python -m oyster_jax.tools.aot --config configs/models/qwen3_14b.py --mesh data=1,fsdp=4,tensor=2`.
Training recipes: configs/experiments/qwen3_14b_sft.py and qwen3_14b_orpo.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "qwen3"
    c.vocab_size = 151936
    c.hidden_size = 5120
    c.intermediate_size = 17408
    c.num_layers = 40
    c.num_heads = 40
    c.num_kv_heads = 8
    c.head_dim = 128
    c.rms_norm_eps = 1e-6
    c.rope_theta = 1_000_000.0
    c.max_position_embeddings = 40960
    c.tie_word_embeddings = False
    c.qkv_bias = False
    c.qk_norm = True
    c.bos_token_id = 151643
    c.eos_token_id = 151645
    return c
