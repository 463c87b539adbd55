"""Qwen3-0.6B (architecture only; weights come from a Hugging Face directory you provide).

Used by the Colab notebook: `convert.from_hf(<Qwen3-0.6B dir>)` reads the same numbers from config.json;
this file lets you AOT-compile or size a run without weights:
`python -m oyster_jax.tools.aot --config configs/models/qwen3_0_6b.py --mesh data=1,fsdp=-1,tensor=1`.
"""

from oyster_jax.configs.models._qwen3 import qwen3_config


def get_config():
    return qwen3_config(
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        tie_word_embeddings=True,
    )
