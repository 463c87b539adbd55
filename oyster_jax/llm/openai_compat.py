"""A backend for any OpenAI-compatible `/chat/completions` endpoint (vLLM, SGLang, our own server, hosted APIs).

Standard library only (`http.client`): each request is a blocking call run in this backend's own thread
pool, whose size is the concurrency limit. Why not `urllib`: it follows redirects and re-sends the
`Authorization` header to wherever the redirect points, and its timeout bounds only socket inactivity (an
endpoint trickling one byte a second never times out). Here a 30x is an error naming the endpoint, so the
key only ever goes to the configured host, and every attempt has one overall deadline (`timeout`: connect,
send, wait and read together) enforced by a watchdog that shuts the socket down when it passes.

Transient failures (timeouts, connection errors, 429, 5xx, a 200 whose body is not a chat completion) are
retried by the project's one `RetryPolicy` (exponential backoff with jitter, honouring Retry-After on
429); other 4xx and redirects fail at once. The API key is read only from an environment variable and is
never logged, put in an error message or written anywhere. Sampling keywords beyond the standard ones
(`top_k`, `chat_template_kwargs`, `response_format`, ...) go into the request body as they are, for
vLLM/SGLang extras; a sampling key `extra_body` (a dict, as in the `openai` client) is merged into the body;
the constructor's `extra_body` adds fixed ones. Token usage is summed in `usage`; `acomplete` returns each
call's own usage and finish reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse

from oyster_jax.llm.base import BackendError, BaseBackend, Completion, split_think, validate_messages
from oyster_jax.llm.retry import RetryPolicy

__all__ = ["OpenAICompatibleBackend", "DEFAULT_API_KEY_ENVS"]

DEFAULT_API_KEY_ENVS = ("OYSTER_API_KEY", "OPENAI_API_KEY")
_MAX_BODY = 64 << 20  # a chat completion larger than this is not one


class OpenAICompatibleBackend(BaseBackend):
    """`OpenAICompatibleBackend("http://127.0.0.1:8000/v1", "my-model")`.

    Args:
      base_url: endpoint root, e.g. http://127.0.0.1:8000/v1 (`/chat/completions` is appended unless present).
      model: the `model` field of each request.
      api_key_env: environment variable(s) holding the key, first one set wins; no key -> no auth header.
      max_concurrency: requests in flight at once (the thread-pool size).
      timeout: overall seconds one attempt may take (connect + send + wait + read); then it is a timeout.
      retry: the RetryPolicy for transient failures (default `RetryPolicy()`: 4 retries, 1 s base, 30 s cap).
      max_retries / backoff_base / backoff_max: override those fields of `retry` (the CLIs' flags).
      default_sampling: sampling keywords merged under each call's keywords.
      extra_body: fields added to every request body (endpoint extras, e.g. {"top_k": 20}).
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
        extra_body: dict | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("model must be a non-empty string")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        parts = urllib.parse.urlsplit(self.url)
        if not parts.hostname:
            raise ValueError(f"base_url has no host: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
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
        self.extra_body = dict(extra_body or {})
        reserved = {"model", "messages", "stream"} & set(self.extra_body)
        if reserved:
            raise ValueError(f"extra_body may not set {sorted(reserved)}")
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Counters (read by the engine's summary and the throughput benchmark).
        self.requests = 0
        self.retries = 0
        self.failures = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # summed over successful calls

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
        extras = params.pop("extra_body", None) or {}
        if not isinstance(extras, dict):
            raise ValueError(f"sampling extra_body must be a JSON object, got {type(extras).__name__}")
        params = {**params, **extras}
        reserved = {"model", "messages", "stream"} & set(params)
        if reserved:
            raise ValueError(f"sampling may not set {sorted(reserved)}")
        body = {"model": self.model, "messages": validate_messages(messages), "stream": False, **self.extra_body}
        body.update({k: v for k, v in params.items() if v is not None})
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _post(self, data: bytes) -> Completion:
        """One blocking attempt within `self.timeout` seconds overall. Raises BackendError (retryable or not)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = "Bearer " + self._api_key
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        conn = self._connection()
        expired = threading.Event()
        sockets = []  # the connected socket, kept here: http.client drops conn.sock once a response owns it

        def watchdog():  # the overall deadline: unblock whatever recv/send the attempt is stuck in
            expired.set()
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.timeout, watchdog)
        timer.daemon = True
        timer.start()
        try:
            conn.connect()  # bounded by the socket timeout (= the deadline) on its own
            sockets.append(conn.sock)
            if expired.is_set():  # the deadline passed while connecting
                watchdog()
            conn.request("POST", self._path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(_MAX_BODY + 1)
            status, reply_headers = resp.status, resp.headers
        except (OSError, http.client.HTTPException) as e:  # timeout, reset, refused, truncated, shut down
            if expired.is_set() or isinstance(e, TimeoutError):
                raise BackendError(
                    f"timed out: no complete answer from {self.url} within the {self.timeout:g}s deadline",
                    retryable=True,
                ) from None
            if isinstance(e, ConnectionRefusedError | socket.gaierror):
                raise BackendError(f"cannot reach {self.url}: {type(e).__name__}", retryable=True) from None
            raise BackendError(f"connection error with {self.url}: {type(e).__name__}", retryable=True) from None
        finally:
            timer.cancel()
            conn.close()
            with self._lock:
                self.in_flight -= 1
        if expired.is_set():  # the body was cut short by the watchdog
            raise BackendError(
                f"timed out: no complete answer from {self.url} within the {self.timeout:g}s deadline", retryable=True
            )
        if 300 <= status < 400:
            raise BackendError(
                f"HTTP {status} redirect from {self.url} refused: redirects are not followed (the API key goes "
                "only to the configured host); point the endpoint at its final address",
                retryable=False,
                status=status,
            )
        if status >= 400:
            retry_after = _retry_after(reply_headers.get("Retry-After"))
            transient = status == 429 or status >= 500
            raise BackendError(
                f"HTTP {status} from {self.url}", retryable=transient, status=status, retry_after=retry_after
            )
        if len(raw) > _MAX_BODY:
            raise BackendError(f"answer from {self.url} exceeds {_MAX_BODY} bytes", retryable=False)
        completion = _parse_completion(raw, self.url)
        with self._lock:
            for key in self.usage:
                self.usage[key] += int(completion.usage.get(key) or 0)
        return completion

    async def achat(self, messages, **sampling) -> tuple[str, str]:
        completion = await self.acomplete(messages, **sampling)
        return completion.reasoning, completion.content

    async def acomplete(self, messages, **sampling) -> Completion:
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


def _parse_completion(raw: bytes, url: str) -> Completion:
    """The completion in a chat-completion body; a garbage body is a retryable BackendError."""
    try:
        data = json.loads(raw.decode("utf-8"))
        choice = data["choices"][0]
        message = choice["message"]
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
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    usage = {k: int(usage[k]) for k in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(k), int)}
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    return Completion(reasoning.strip(), content.strip(), usage, finish if isinstance(finish, str) else None)
