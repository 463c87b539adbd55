"""SmolLM2-135M-Instruct: Llama architecture, tied embeddings, ChatML (architecture only; weights come from
`python -m oyster_jax.convert.fetch smollm2-135m-instruct`, which prints the Hugging Face directory).

The numbers are what that GGUF's metadata says (convert.gguf reads them; tests/test_real_model.py checks
this file against the fetched config.json). Use it with `--config.init_from=<that directory>` and
`--config.data.tokenizer=<that directory>/tokenizer.json`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "llama"
    c.vocab_size = 49152
    c.hidden_size = 576
    c.intermediate_size = 1536
    c.num_layers = 30
    c.num_heads = 9
    c.num_kv_heads = 3
    c.head_dim = 64
    c.rms_norm_eps = 1e-5
    c.rope_theta = 100_000.0
    c.max_position_embeddings = 8192
    c.tie_word_embeddings = True
    c.qkv_bias = False
    c.qk_norm = False
    c.bos_token_id = 1  # <|im_start|>
    c.eos_token_id = 2  # <|im_end|>: the chat model stops here
    c.pad_token_id = 2
    return c
