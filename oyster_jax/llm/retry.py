"""The one retry policy: how many calls, how long to wait between them, and which failures deserve another.

    policy = RetryPolicy(retries=4, backoff_base=1.0, backoff_max=30.0)       # HTTP: transient BackendErrors
    reply = await policy.call(lambda attempt: post(body))

The OpenAI-compatible backend retries transport failures with it; the judge client
(`oyster_jax.csa.judge_client`) retries unparseable answers with it (no wait, a parse error is not load).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from oyster_jax.llm.base import BackendError

__all__ = ["RetryPolicy", "transient"]

T = TypeVar("T")


def transient(error: BaseException) -> bool:
    """A BackendError the backend marked retryable: timeouts, connection errors, 429, 5xx, a garbage body."""
    return isinstance(error, BackendError) and error.retryable


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """`retries` more calls after the first, for errors where `retry_on(error)` is true.

    The wait before retry k (k = 0, 1, ...) is min(backoff_max, backoff_base * 2**k) * U(0.5, 1): exponential
    with jitter, so callers that failed together do not come back together. A `retry_after` the server asked
    for (HTTP 429 Retry-After, read from the error's `retry_after` attribute) is honoured up to backoff_max.
    """

    retries: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_on: Callable[[BaseException], bool] = transient

    def __post_init__(self):
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"RetryPolicy.retries must be an integer >= 0, got {self.retries!r}")
        if self.backoff_base < 0 or self.backoff_max < 0:
            raise ValueError(
                f"RetryPolicy backoff must be >= 0, got base={self.backoff_base!r} max={self.backoff_max!r}"
            )

    @property
    def attempts(self) -> int:
        """Calls at most: the first one and its retries."""
        return self.retries + 1

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether call number `attempt` (0-based) that raised `error` is followed by another."""
        return attempt < self.retries and bool(self.retry_on(error))

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed call number `attempt` (0-based) before the next one."""
        jitter = (rng or random).uniform(0.5, 1.0)
        wait = min(self.backoff_max, self.backoff_base * 2**attempt) * jitter
        if retry_after is not None:
            wait = min(self.backoff_max, max(wait, retry_after))
        return wait

    async def call(
        self,
        fn: Callable[[int], Awaitable[T]],
        *,
        on_retry: Callable[[BaseException, int], None] | None = None,
    ) -> T:
        """`await fn(attempt)` for attempt = 0, 1, ... until it returns, or raises an error that is not retried
        (the last error propagates unchanged). `on_retry(error, attempt)` runs before each wait."""
        attempt = 0
        while True:
            try:
                return await fn(attempt)
            except Exception as e:
                if not self.should_retry(e, attempt):
                    raise
                if on_retry is not None:
                    on_retry(e, attempt)
                wait = self.delay(attempt, getattr(e, "retry_after", None))
                attempt += 1
                if wait > 0:
                    await asyncio.sleep(wait)
