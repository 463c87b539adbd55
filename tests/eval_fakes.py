"""Test doubles for the evaluation harnesses: a scripted Backend and a tiny in-memory chat model."""

from __future__ import annotations

import json

import jax
import numpy as np

from oyster_jax import models
from oyster_jax.llm.base import Completion

TINY_CHAT_CFG = models.ModelConfig(
    vocab_size=4096,  # the bundled seed tokenizer
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=1024,
)


def random_params(cfg, seed=0):
    """Random weights from numpy (no XLA program to compile): norm scales near 1, the rest N(0, 0.3)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, a: (
            (1.0 if "norm" in jax.tree_util.keystr(path) else 0.0)
            + 0.3 * rng.standard_normal(a.shape).astype(np.float32)
        ),
        models.abstract_params(cfg),
    )


def json_block(obj) -> str:
    return "Some thoughts first.\n```json\n" + json.dumps(obj, ensure_ascii=False) + "\n```"


class ScriptedBackend:
    """Backend whose answer is `script(prompt_text, sampling, call_number)` -> str, (reasoning, content) or
    (reasoning, content, finish_reason); the finish reason defaults to "stop". `conversations` keeps every
    call's whole message list."""

    def __init__(self, script, name="scripted"):
        self.script, self.name = script, name
        self.calls: list[tuple[str, dict]] = []
        self.conversations: list[list[dict]] = []

    async def acomplete(self, messages, **sampling) -> Completion:
        prompt = messages[-1]["content"]
        self.calls.append((prompt, sampling))
        self.conversations.append([dict(m) for m in messages])
        out = self.script(prompt, sampling, len(self.calls))
        out = out if isinstance(out, tuple) else ("", out)
        reasoning, content, finish = out if len(out) == 3 else (*out, "stop")
        return Completion(reasoning, content, finish_reason=finish)

    async def achat(self, messages, **sampling):
        completion = await self.acomplete(messages, **sampling)
        return completion.reasoning, completion.content

    def chat(self, messages, **sampling):
        import asyncio

        return asyncio.run(self.achat(messages, **sampling))

    def close(self):
        pass
