"""The tiny Qwen3-architecture model (~5.0M params) used by the tests, `make demo` and the CPU benchmarks.

4 layers, hidden 256, MLP 1024, 4 query / 2 KV heads of 64, RoPE θ 10,000, 2048 positions, vocabulary 4096
(the bundled seed tokenizer, oyster_jax/data/seed/tokenizer.json). These are `ModelConfig()`'s defaults,
defined once in oyster_jax/models/config.py; this file gives them a name.
Used by: `make demo` (configs/experiments/tiny_csa.py), `make test`,
`python -m oyster_jax.bench.train_step --config tiny_csa`.
"""

import ml_collections

from oyster_jax.models.config import RUNTIME_FIELDS, ModelConfig


def get_config() -> ml_collections.ConfigDict:
    fields = ModelConfig().to_dict()
    return ml_collections.ConfigDict({k: v for k, v in fields.items() if k not in RUNTIME_FIELDS})
