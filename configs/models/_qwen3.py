"""What every Qwen3 size shares; each `qwen3_*.py` file sets only its sizes."""

import ml_collections


def qwen3_config(**sizes) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "qwen3"
    c.vocab_size = 151936
    c.head_dim = 128
    c.num_kv_heads = 8
    c.rms_norm_eps = 1e-6
    c.rope_theta = 1_000_000.0
    c.max_position_embeddings = 40960
    c.qkv_bias = False
    c.qk_norm = True
    c.bos_token_id = 151643
    c.eos_token_id = 151645  # <|im_end|>: the chat models stop here
    c.update(sizes)
    return c
