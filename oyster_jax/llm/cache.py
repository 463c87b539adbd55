"""An on-disk cache of chat calls, so that a rerun or a resumed run never pays for the same call twice.

    cache = CallCache("runs/lingo/cache")
    judge = CachedBackend(backend, cache)          # any Backend; same protocol, plus `acomplete`
    completion = await judge.acomplete(messages, temperature=0.0, max_tokens=1024)
    completion.cached                              # True when it came from the disk

The key is the SHA-256 of (endpoint, model, messages, sampling) written as canonical JSON, sampling
including everything that changes the answer (seed, response_format, endpoint extras). One small JSON file per
key (`<dir>/<k[:2]>/<k>.json`, written atomically), so concurrent calls and concurrent runs sharing a folder
never tear an entry; an unreadable entry is a miss and is rewritten. Only answers are stored: errors are
never cached. The endpoint of a local backend is its checkpoint path: a model retrained in place needs a new
cache folder (or none).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

from oyster_jax.core.files import atomic_write_json
from oyster_jax.llm.base import BaseBackend, Completion, complete

__all__ = ["CallCache", "CachedBackend", "call_key"]


def call_key(endpoint: str, model: str | None, messages: list[dict], sampling: dict) -> str:
    """The cache key of one call (hex SHA-256 of its canonical JSON)."""
    doc = {"endpoint": endpoint, "model": model, "messages": messages, "sampling": sampling}
    text = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallCache:
    """Completions on disk under `directory`, keyed by `call_key`. Counts `hits`, `misses` and `writes`."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = pathlib.Path(directory)
        self.hits = self.misses = self.writes = 0

    def _path(self, key: str) -> pathlib.Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        try:
            entry = json.loads(self._path(key).read_text("utf-8"))
            completion = Completion(
                str(entry["reasoning"]),
                str(entry["content"]),
                dict(entry.get("usage") or {}),
                entry.get("finish_reason"),
                cached=True,
            )
        except (OSError, ValueError, KeyError, TypeError):  # missing or unreadable: a miss
            self.misses += 1
            return None
        self.hits += 1
        return completion

    def put(self, key: str, completion: Completion) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "reasoning": completion.reasoning,
            "content": completion.content,
            "usage": completion.usage,  # what the call cost when it was paid for
            "finish_reason": completion.finish_reason,
        }
        atomic_write_json(path, entry, indent=None)
        self.writes += 1


class CachedBackend(BaseBackend):
    """`backend` behind `cache`: a call seen before is answered from the disk (`Completion.cached`)."""

    def __init__(self, backend, cache: CallCache):
        self.backend = backend
        self.cache = cache
        self.name = backend.name
        # A schema-constraining backend stays one behind the cache (the judge client asks for schemas).
        self.constrains_json = getattr(backend, "constrains_json", False)
        self._endpoint = getattr(backend, "url", None) or backend.name
        self._model = getattr(backend, "model", None)

    async def achat(self, messages, **sampling) -> tuple[str, str]:
        completion = await self.acomplete(messages, **sampling)
        return completion.reasoning, completion.content

    async def acomplete(self, messages, **sampling) -> Completion:
        key = call_key(self._endpoint, self._model, messages, sampling)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        completion = await complete(self.backend, messages, **sampling)
        self.cache.put(key, completion)
        return completion

    def close(self) -> None:
        pass  # the wrapped backend belongs to whoever built it
