"""Generation with a KV cache.

from oyster_jax import infer
new = infer.generate(cfg, params, [[1, 2, 3], [4, 5]], max_new_tokens=32)            # greedy, new tokens only
new = infer.generate(cfg, params, prompts, 64, temperature=0.7, top_k=50, top_p=0.9, seed=1,
                     eos_ids=[2], stop_strings=["\\n\\n"], decode_fn=tokenizer.decode, mesh=mesh)

Serving: `infer.engine.Engine` (continuous batching; requests join and leave the decode batch between steps)
and `infer.constrained` (grammar token masks from llguidance, applied to the logits inside the step).
"""

from oyster_jax.infer.decoder import KVCache, decode, init_cache
from oyster_jax.infer.generation import (
    Generation,
    GenerationError,
    bucket_batch,
    bucket_length,
    generate,
    generate_full,
    shard_params,
)
from oyster_jax.infer.sampling import choose_tokens, filter_logits

__all__ = [
    "Generation",
    "GenerationError",
    "KVCache",
    "bucket_batch",
    "bucket_length",
    "choose_tokens",
    "decode",
    "filter_logits",
    "generate",
    "generate_full",
    "init_cache",
    "shard_params",
]
