"""DeepSeek-R1-Distill-Qwen-14B: Qwen2 architecture (qkv bias, no q/k norm), the report's second base.

`python -m oyster_jax.tools.aot --config configs/models/ds_r1_distill_qwen_14b.py --mesh data=1,fsdp=4,tensor=2`.
Training recipe: configs/experiments/ds_r1_distill_qwen_14b_orpo.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "qwen2"
    c.vocab_size = 152064
    c.hidden_size = 5120
    c.intermediate_size = 13824
    c.num_layers = 48
    c.num_heads = 40
    c.num_kv_heads = 8
    c.head_dim = 128
    c.rms_norm_eps = 1e-5
    c.rope_theta = 1_000_000.0
    c.max_position_embeddings = 131072
    c.tie_word_embeddings = False
    c.qkv_bias = True
    c.qk_norm = False
    c.bos_token_id = 151646
    c.eos_token_id = 151643
    return c
