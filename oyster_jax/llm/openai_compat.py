"""A backend for any OpenAI-compatible `/chat/completions` endpoint (vLLM, SGLang, our own server, hosted APIs).

Standard library only: each request is a blocking urllib call run in this backend's own thread pool, whose
size is the concurrency limit. Transient failures (timeouts, connection errors, 429, 5xx, a 200 whose body
is not a chat completion) are retried by the project's one `RetryPolicy` (exponential backoff with jitter,
honouring Retry-After on 429); other 4xx fail at once. The API key is read only from an environment
variable and is never logged, put in an error message or written anywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import http.client
import json
import os
import threading
import urllib.error
import urllib.request

from oyster_jax.llm.base import BackendError, BaseBackend, split_think, validate_messages
from oyster_jax.llm.retry import RetryPolicy

__all__ = ["OpenAICompatibleBackend", "DEFAULT_API_KEY_ENVS"]

DEFAULT_API_KEY_ENVS = ("OYSTER_API_KEY", "OPENAI_API_KEY")
_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop", "presence_penalty", "frequency_penalty")


class OpenAICompatibleBackend(BaseBackend):
    """`OpenAICompatibleBackend("http://127.0.0.1:8000/v1", "my-model")`.

    Args:
      base_url: endpoint root, e.g. http://127.0.0.1:8000/v1 (`/chat/completions` is appended unless present).
      model: the `model` field of each request.
      api_key_env: environment variable(s) holding the key, first one set wins; no key -> no auth header.
      max_concurrency: requests in flight at once (the thread-pool size).
      timeout: seconds of socket inactivity before an attempt counts as timed out.
      retry: the RetryPolicy for transient failures (default `RetryPolicy()`: 4 retries, 1 s base, 30 s cap).
      max_retries / backoff_base / backoff_max: override those fields of `retry` (the CLIs' flags).
      default_sampling: sampling keywords merged under each call's keywords.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | tuple[str, ...] = DEFAULT_API_KEY_ENVS,
        max_concurrency: int = 16,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        default_sampling: dict | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("model must be a non-empty string")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.name = f"openai:{base_url}#{model}"
        envs = (api_key_env,) if isinstance(api_key_env, str) else tuple(api_key_env)
        self._api_key = next((os.environ[e] for e in envs if os.environ.get(e)), None)
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        overrides = {"retries": max_retries, "backoff_base": backoff_base, "backoff_max": backoff_max}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        self.retry = dataclasses.replace(retry or RetryPolicy(), **overrides)
        self.default_sampling = dict(default_sampling or {})
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Counters (read by the engine's summary and the throughput benchmark).
        self.requests = 0
        self.retries = 0
        self.failures = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def __repr__(self):  # never shows the key
        return (
            f"OpenAICompatibleBackend(url={self.url!r}, model={self.model!r}, auth={'yes' if self._api_key else 'no'})"
        )

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.max_concurrency, thread_name_prefix="oyster-http"
                )
            return self._executor

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _body(self, messages, sampling) -> bytes:
        params = {**self.default_sampling, **sampling}
        unknown = set(params) - set(_SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling keyword(s) {sorted(unknown)}; known: {list(_SAMPLING_KEYS)}")
        body = {"model": self.model, "messages": validate_messages(messages), "stream": False}
        body.update({k: v for k, v in params.items() if v is not None})
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _post(self, data: bytes) -> tuple[str, str]:
        """One blocking attempt. Raises BackendError (retryable or not)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = "Bearer " + self._api_key
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            transient = e.code == 429 or e.code >= 500
            raise BackendError(
                f"HTTP {e.code} from {self.url}", retryable=transient, status=e.code, retry_after=retry_after
            ) from None
        except TimeoutError:  # socket.timeout is TimeoutError
            raise BackendError(f"timed out after {self.timeout}s waiting for {self.url}", retryable=True) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise BackendError(
                    f"timed out after {self.timeout}s connecting to {self.url}", retryable=True
                ) from None
            raise BackendError(f"cannot reach {self.url}: {reason}", retryable=True) from None
        except (ConnectionError, OSError, http.client.HTTPException) as e:  # reset, refused, truncated
            raise BackendError(f"connection error with {self.url}: {type(e).__name__}", retryable=True) from None
        finally:
            with self._lock:
                self.in_flight -= 1
        return _parse_completion(raw, self.url)

    async def achat(self, messages, **sampling) -> tuple[str, str]:
        data = self._body(messages, sampling)
        loop = asyncio.get_running_loop()
        calls = 0

        def attempt(_):
            nonlocal calls
            calls += 1
            return loop.run_in_executor(self._pool(), self._post, data)

        def count_retry(error, _):
            with self._lock:
                self.retries += 1

        try:
            return await self.retry.call(attempt, on_retry=count_retry)
        except BackendError as e:
            with self._lock:
                self.failures += 1
            if calls > 1:
                raise BackendError(f"{e} (after {calls} attempts)", retryable=e.retryable, status=e.status) from None
            raise


def _retry_after(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse_completion(raw: bytes, url: str) -> tuple[str, str]:
    """(reasoning, content) from a chat-completion body; a garbage body is a retryable BackendError."""
    try:
        data = json.loads(raw.decode("utf-8"))
        message = data["choices"][0]["message"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise BackendError(f"malformed chat completion from {url} ({len(raw)} bytes)", retryable=True) from None
    if not isinstance(message, dict):
        raise BackendError(f"malformed chat completion from {url}: 'message' is not an object", retryable=True)
    content = message.get("content")
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if content is None:
        content = ""
    if not isinstance(content, str) or not isinstance(reasoning, str):
        raise BackendError(f"malformed chat completion from {url}: non-string content", retryable=True)
    if not content and not reasoning:
        raise BackendError(f"empty chat completion from {url}", retryable=True)
    if not reasoning:
        reasoning, content = split_think(content)
    return reasoning.strip(), content.strip()
