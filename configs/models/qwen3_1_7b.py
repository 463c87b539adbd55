"""Qwen3-1.7B (architecture only; weights from a Hugging Face directory you provide).

`python -m oyster_jax.tools.aot --config configs/models/qwen3_1_7b.py --mesh data=1,fsdp=-1,tensor=1`.
"""

from oyster_jax.configs.models._qwen3 import qwen3_config


def get_config():
    return qwen3_config(
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        tie_word_embeddings=True,
    )
