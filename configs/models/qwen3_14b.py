"""Qwen3-14B, the report's main base model (architecture only; weights from a Hugging Face directory).

AOT compile of forward+backward on an 8-device mesh without any weights:
`python -m oyster_jax.tools.aot --config configs/models/qwen3_14b.py --mesh data=1,fsdp=4,tensor=2`.
Training recipes: configs/experiments/qwen3_14b_sft.py and qwen3_14b_orpo.py.
"""

from oyster_jax.configs.models._qwen3 import qwen3_config


def get_config():
    return qwen3_config(
        hidden_size=5120,
        intermediate_size=17408,
        num_layers=40,
        num_heads=40,
        tie_word_embeddings=False,
    )
