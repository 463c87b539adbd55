"""The one judge client: a Backend asked for an answer that must parse, with the one rule for asking again.

    client = JudgeClient(backend, retries=3)
    answer = await client.ask(messages, content_parser(parse_safety_judgment), task="safety_judge",
                              sampling={"temperature": 0.0, "max_tokens": 1024})
    answer.value, answer.attempts

Used by the Lingo-BP engine (judges, optimizer and policy calls) and by both evaluation harnesses.

Two kinds of failure, two layers, one `RetryPolicy` type:
- transport (timeouts, 429, 5xx, garbage bodies) is retried inside the backend with backoff; what still
  fails arrives here as a `BackendError` and propagates;
- an answer that does not parse (`JudgeParseError`, `ChainParseError`) is asked again at once, up to
  `retries` more times. A retry is sampled, not greedy (a greedy judge repeats the same broken answer):
  `retry_sampling` (temperature 0.7 by default) is merged over the call's sampling and the seed is the
  call's seed (0 if none) plus the attempt number, so every retry draws a different answer even from a
  backend whose default seed is fixed (the local JAX backend). An answer that never parses raises
  `JudgeFailed`: nothing is ever scored by default.

Auditing: with `log=[...]`, every call (each attempt) appends one entry: task, attempt number, backend,
the messages and sampling sent, the raw reasoning and content received, the parse error (None when it
parsed) or the transport error, token usage, finish reason and whether the answer came from the call cache.
With `stats={...}`, per-task counters are summed in `stats["tasks"][task]`: calls, parse_failures, errors,
cached, prompt_tokens, completion_tokens (tokens of paid calls only: a cached answer costs nothing).

Schemas: a backend that decodes to a JSON schema (`constrains_json`, the local JAX backend) is asked for the
task's schema (`csa.judge_schemas`) as `response_format`; `schemas=True` asks any backend (vLLM and SGLang
honour OpenAI's `json_schema`), `schemas=False` none.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from oyster_jax.core.chain import ChainParseError
from oyster_jax.csa import judge_schemas
from oyster_jax.csa.judges import JudgeParseError
from oyster_jax.llm.base import BackendError, complete
from oyster_jax.llm.retry import RetryPolicy

__all__ = ["PARSE_ERRORS", "RETRY_SAMPLING", "Answer", "JudgeClient", "JudgeFailed", "content_parser", "retry_sampling"]

PARSE_ERRORS = (JudgeParseError, ChainParseError)
RETRY_SAMPLING = {"temperature": 0.7}
TASK_COUNTERS = ("calls", "parse_failures", "errors", "cached", "prompt_tokens", "completion_tokens")


class JudgeFailed(RuntimeError):
    """A structured call whose answer never parsed within its retries."""

    def __init__(self, task: str, attempts: int, last_error: str):
        super().__init__(f"{task}: no parseable answer in {attempts} attempts (last: {last_error})")
        self.task = task
        self.attempts = attempts
        self.last_error = last_error


@dataclasses.dataclass(frozen=True)
class Answer:
    value: object  # what the parser returned
    attempts: int  # calls it took (1 = the first answer parsed)


def retry_sampling(sampling: dict, attempt: int, retry: dict | None = None) -> dict:
    """The sampling of call number `attempt` (0 = the first, as given) after unparseable answers."""
    if attempt == 0:
        return dict(sampling)
    seed = int(sampling.get("seed") or 0) + attempt
    return {**sampling, **(RETRY_SAMPLING if retry is None else retry), "seed": seed}


def content_parser(fn: Callable[[str], object]) -> Callable[[str, str], object]:
    """Adapt a parser of the content text to `ask`'s (reasoning, content) signature."""
    return lambda reasoning, content: fn(content)


def _is_parse_error(error: BaseException) -> bool:
    return isinstance(error, PARSE_ERRORS)


class JudgeClient:
    """`ask` a backend for a structured answer. `retries`: extra calls when an answer does not parse;
    `retry_sampling`: merged over the sampling of those calls (see `retry_sampling`)."""

    def __init__(self, backend, *, retries: int = 3, retry_sampling: dict | None = None, schemas: bool | None = None):
        self.backend = backend
        self.policy = RetryPolicy(retries=retries, backoff_base=0.0, backoff_max=0.0, retry_on=_is_parse_error)
        self.retry_sampling = dict(RETRY_SAMPLING if retry_sampling is None else retry_sampling)
        self.schemas = bool(getattr(backend, "constrains_json", False)) if schemas is None else bool(schemas)

    @property
    def retries(self) -> int:
        return self.policy.retries

    async def ask(
        self,
        messages: list[dict],
        parser: Callable[[str, str], object],
        *,
        task: str,
        sampling: dict,
        stats: dict | None = None,
        log: list | None = None,
    ) -> Answer:
        """`parser(reasoning, content)` of the backend's answer. Raises JudgeFailed when no answer parses
        within the retries; BackendError propagates (the backend already retried the transport).

        `stats`, when given, counts `calls`, `parse_failures[task]` and `tasks[task]` (the Lingo-BP engine's
        per-query bookkeeping); `log`, when given, receives one entry per call (see the module notes)."""
        if self.schemas and "response_format" not in sampling:
            fmt = judge_schemas.response_format(task, int(sampling.get("max_tokens") or 1024))
            sampling = sampling if fmt is None else {**sampling, "response_format": fmt}

        def count(**amounts):
            if stats is not None:
                counters = stats.setdefault("tasks", {}).setdefault(task, dict.fromkeys(TASK_COUNTERS, 0))
                for key, n in amounts.items():
                    counters[key] += n

        async def attempt(k: int):
            if stats is not None:
                stats["calls"] = stats.get("calls", 0) + 1
            count(calls=1)
            call_sampling = retry_sampling(sampling, k, self.retry_sampling)
            entry = {"task": task, "attempt": k + 1, "backend": getattr(self.backend, "name", "?")}
            entry.update(messages=messages, sampling=call_sampling)
            t0 = time.monotonic()
            try:
                completion = await complete(self.backend, messages, **call_sampling)
            except BackendError as e:
                count(errors=1)
                if log is not None:
                    log.append({**entry, "error": str(e), "elapsed_s": round(time.monotonic() - t0, 3)})
                raise
            paid = {} if completion.cached else completion.usage
            count(
                cached=int(completion.cached),
                prompt_tokens=int(paid.get("prompt_tokens") or 0),
                completion_tokens=int(paid.get("completion_tokens") or 0),
            )
            entry.update(
                reasoning=completion.reasoning,
                content=completion.content,
                usage=completion.usage,
                finish_reason=completion.finish_reason,
                cached=completion.cached,
                elapsed_s=round(time.monotonic() - t0, 3),
                parse_error=None,
            )
            try:
                return Answer(parser(completion.reasoning, completion.content), k + 1)
            except PARSE_ERRORS as e:
                entry["parse_error"] = f"{type(e).__name__}: {e}"
                raise
            finally:
                if log is not None:
                    log.append(entry)

        def count_failure(error, _):
            count(parse_failures=1)
            if stats is not None:
                failures = stats.setdefault("parse_failures", {})
                failures[task] = failures.get(task, 0) + 1

        try:
            return await self.policy.call(attempt, on_retry=count_failure)
        except PARSE_ERRORS as e:
            count_failure(e, None)  # the last one, which is not retried
            raise JudgeFailed(task, self.policy.attempts, str(e)) from None
