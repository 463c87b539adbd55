"""Qwen3-4B (architecture only; weights from a Hugging Face directory you provide).

`python -m oyster_jax.tools.aot --config configs/models/qwen3_4b.py --mesh data=1,fsdp=-1,tensor=2`.
"""

from oyster_jax.configs.models._qwen3 import qwen3_config


def get_config():
    return qwen3_config(
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        tie_word_embeddings=True,
    )
