"""Qwen3-0.6B (architecture only; weights come from a Hugging Face directory you provide).

Used by the Colab notebook: `convert.from_hf(<Qwen3-0.6B dir>)` reads the same numbers from config.json;
this file lets you AOT-compile or size a run without weights:
`python -m oyster_jax.tools.aot --config configs/models/qwen3_0_6b.py --mesh data=1,fsdp=-1,tensor=1`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "qwen3"
    c.vocab_size = 151936
    c.hidden_size = 1024
    c.intermediate_size = 3072
    c.num_layers = 28
    c.num_heads = 16
    c.num_kv_heads = 8
    c.head_dim = 128
    c.rms_norm_eps = 1e-6
    c.rope_theta = 1_000_000.0
    c.max_position_embeddings = 40960
    c.tie_word_embeddings = True
    c.qkv_bias = False
    c.qk_norm = True
    c.bos_token_id = 151643
    c.eos_token_id = 151645
    return c
