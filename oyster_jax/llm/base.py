"""The Backend protocol every LLM backend implements, and helpers shared by backends."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Protocol, runtime_checkable

__all__ = [
    "Backend",
    "BaseBackend",
    "BackendError",
    "Completion",
    "Message",
    "complete",
    "split_think",
    "validate_messages",
]

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


class BackendError(RuntimeError):
    """A chat call that failed for good (after the backend's own retries) or that must not be retried.

    `retryable` says whether the cause was transient (timeout, 429, 5xx, garbage body); `status` is the HTTP
    status when there was one; `retry_after` the seconds the server asked to wait (429 Retry-After). Messages
    never contain the API key or request headers.
    """

    def __init__(
        self, message: str, *, retryable: bool = False, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Completion:
    """One chat answer with its accounting: what `acomplete` returns.

    `usage` holds `prompt_tokens` / `completion_tokens` when the backend reports them (empty otherwise);
    `finish_reason` is the backend's ('stop', 'length', ...) or None when unknown; `cached` is True when the
    answer came from an on-disk cache (`llm.cache`) and cost nothing.
    """

    reasoning: str
    content: str
    usage: dict = dataclasses.field(default_factory=dict)
    finish_reason: str | None = None
    cached: bool = False


async def complete(backend, messages: list[Message], **sampling) -> Completion:
    """`backend.acomplete(...)` when the backend has it, else its `achat` wrapped (no usage known)."""
    acomplete = getattr(backend, "acomplete", None)
    if acomplete is not None:
        return await acomplete(messages, **sampling)
    reasoning, content = await backend.achat(messages, **sampling)
    return Completion(reasoning, content)


@runtime_checkable
class Backend(Protocol):
    """`chat(messages, **sampling) -> (reasoning, content)`; `achat` is the same as a coroutine.

    `reasoning` is the model's separate thinking ('' when the model gives none); `content` the reply.
    Sampling keywords understood by every backend: temperature, top_p, max_tokens, seed, stop.
    """

    name: str

    def chat(self, messages: list[Message], **sampling) -> tuple[str, str]: ...

    async def achat(self, messages: list[Message], **sampling) -> tuple[str, str]: ...

    def close(self) -> None: ...


class BaseBackend:
    """Implements the blocking `chat` on top of `achat`; subclasses implement `achat`."""

    name = "backend"

    def chat(self, messages: list[Message], **sampling) -> tuple[str, str]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.achat(messages, **sampling))
        raise RuntimeError(f"{type(self).__name__}.chat called inside a running event loop; await achat(...)")

    async def achat(self, messages: list[Message], **sampling) -> tuple[str, str]:  # pragma: no cover
        raise NotImplementedError

    async def acomplete(self, messages: list[Message], **sampling) -> Completion:
        """The answer with its token usage and finish reason; backends that know them override this."""
        reasoning, content = await self.achat(messages, **sampling)
        return Completion(reasoning, content)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


def split_think(content: str) -> tuple[str, str]:
    """('reasoning', 'reply') from a reply that starts with <think>…</think>; ('', content) otherwise.

    A reply that opens <think> and never closes it is all reasoning (the model ran out of tokens).
    """
    m = _THINK.match(content)
    if m:
        return m.group(1).strip(), content[m.end() :]
    stripped = content.lstrip()
    if stripped.startswith("<think>"):
        return stripped[len("<think>") :].strip(), ""
    return "", content


def validate_messages(messages) -> list[Message]:
    """Messages must be a non-empty list of {role, content: str}; raises ValueError naming the bad item."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}]: expected role system/user/assistant, got {m!r:.80}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}].content must be a string")
    return list(messages)
