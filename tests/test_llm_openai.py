"""OpenAICompatibleBackend against the scripted local server: retries, timeouts, errors, key handling, concurrency."""

import asyncio
import threading
import time

import pytest

from oyster_jax.llm import Backend, BackendError, OpenAICompatibleBackend, backend_from_spec, parse_spec
from oyster_jax.llm.spec import SpecError
from oyster_jax.llm.testing import FakeOpenAIServer, Reply

MSG = [{"role": "user", "content": "hello"}]


def _backend(server, **kw):
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 120.0)  # a healthy local request never times out, however loaded the machine
    return OpenAICompatibleBackend(server.base_url, "m", **kw)


def test_reasoning_fields_and_request_body():
    replies = iter([Reply.chat("answer", reasoning="thought"), Reply.chat("<think>\nhmm\n</think>\n\nfinal")])
    with FakeOpenAIServer(lambda r: next(replies)) as server:
        b = _backend(server)
        assert b.chat(MSG, temperature=0.0, max_tokens=7) == ("thought", "answer")
        assert b.chat(MSG) == ("hmm", "final")
        body = server.requests[0]
        assert body["model"] == "m" and body["messages"] == MSG
        assert body["temperature"] == 0.0 and body["max_tokens"] == 7
        # Keywords beyond the standard ones pass through as endpoint extras (vLLM/SGLang), with extra_body.
        b = _backend(server, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        replies = iter([Reply.chat("x", headers={})])
        server.handler = lambda r: next(replies)
        b.chat(MSG, top_k=20, response_format={"type": "json_object"})
        body = server.requests[-1]
        assert body["top_k"] == 20 and body["response_format"] == {"type": "json_object"}
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
        with pytest.raises(ValueError, match="may not set"):
            b.chat(MSG, model="other")


def test_retries_then_success():
    script = iter([Reply(status=500), Reply(status=429, headers={"Retry-After": "0"}), Reply(body="<html>oops"), "ok"])
    with FakeOpenAIServer(lambda r: next(script)) as server:
        b = _backend(server, max_retries=3)
        assert b.chat(MSG) == ("", "ok")
        assert len(server.requests) == 4 and b.retries == 3 and b.failures == 0


def test_gives_up_after_max_retries_and_does_not_retry_4xx():
    with FakeOpenAIServer(lambda r: Reply(status=503)) as server:
        b = _backend(server, max_retries=2)
        with pytest.raises(BackendError, match="HTTP 503.*3 attempts") as e:
            b.chat(MSG)
        assert e.value.retryable and e.value.status == 503 and len(server.requests) == 3
    with FakeOpenAIServer(lambda r: Reply(status=400, body={"error": "bad"})) as server:
        b = _backend(server, max_retries=5)
        with pytest.raises(BackendError, match="HTTP 400") as e:
            b.chat(MSG)
        assert not e.value.retryable and len(server.requests) == 1


def test_timeout_is_retried_then_fails():
    # The server never answers (until it stops), so only the client's timeout can end an attempt: a short
    # timeout is safe here, and finishing long before the hour-long reply shows the timeout worked.
    with FakeOpenAIServer(lambda r: Reply(delay=3600.0)) as server:
        b = _backend(server, timeout=0.2, max_retries=1)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="timed out") as e:
            b.chat(MSG)
        assert e.value.retryable and len(server.requests) == 2
        assert time.monotonic() - t0 < 300


def test_redirects_are_refused_and_the_key_stays_home(monkeypatch):
    """A 30x is not followed: the key never reaches the redirect's host, whose reply is never taken."""
    monkeypatch.setenv("OYSTER_API_KEY", "sk-secret-123")
    with FakeOpenAIServer(lambda r: "attacker's answer") as elsewhere:
        target = elsewhere.base_url + "/chat/completions"
        with FakeOpenAIServer(lambda r: Reply(status=307, headers={"Location": target})) as server:
            b = _backend(server, max_retries=3)
            with pytest.raises(BackendError, match="HTTP 307 redirect from .* refused") as e:
                b.chat(MSG)
            assert not e.value.retryable and len(server.requests) == 1  # not retried either
            assert server.request_headers[0]["Authorization"] == "Bearer sk-secret-123"
            assert "sk-secret" not in str(e.value)
        assert elsewhere.requests == []


def test_a_trickling_endpoint_meets_the_overall_deadline():
    """One byte every 0.2 s never trips a socket-inactivity timeout; the overall deadline still ends it.
    The body would take about a minute to arrive; the bound below leaves the loaded machine ample margin."""
    body = Reply.chat("x" * 300).body
    with FakeOpenAIServer(lambda r: Reply(body=body, trickle=0.2)) as server:
        b = _backend(server, timeout=1.0, max_retries=0)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="within the 1s deadline") as e:
            b.chat(MSG)
        assert e.value.retryable
        assert time.monotonic() - t0 < 30.0


def test_token_usage_is_summed():
    def reply(_):
        r = Reply.chat("ok")
        r.body["usage"] = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        return r

    with FakeOpenAIServer(reply) as server:
        b = _backend(server)
        b.chat(MSG)
        b.chat(MSG)
        assert b.usage == {"prompt_tokens": 22, "completion_tokens": 10}


def test_garbage_and_dropped_connections_fail_cleanly():
    for reply in (Reply(body="not json"), Reply(body={"choices": []}), Reply(drop_connection=True), Reply.chat(None)):
        with FakeOpenAIServer(lambda r, reply=reply: reply) as server:
            b = _backend(server, max_retries=1)
            with pytest.raises(BackendError) as e:
                b.chat(MSG)
            assert e.value.retryable and len(server.requests) == 2


def test_unreachable_endpoint():
    with FakeOpenAIServer(lambda r: "x") as server:
        url = server.base_url
    b = OpenAICompatibleBackend(url, "m", backoff_base=0.01, max_retries=1, timeout=60.0)  # refused at once
    with pytest.raises(BackendError, match="cannot reach|connection"):
        b.chat(MSG)


def test_api_key_only_from_env_and_never_shown(monkeypatch):
    secret = "sk-test-SECRET-123"
    monkeypatch.setenv("OYSTER_API_KEY", secret)
    with FakeOpenAIServer(lambda r: Reply(status=401)) as server:
        b = _backend(server)
        assert secret not in repr(b)
        with pytest.raises(BackendError) as e:
            b.chat(MSG)
        assert secret not in str(e.value)
        assert server.request_headers[0]["Authorization"] == "Bearer " + secret
    monkeypatch.delenv("OYSTER_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAIServer(lambda r: "ok") as server:
        _backend(server).chat(MSG)
        assert "Authorization" not in server.request_headers[0]


def test_concurrency_limit():
    async def fire(b, n):
        return await asyncio.gather(*(b.achat(MSG) for _ in range(n)))

    def answered_in_waves(size):
        # A request is answered only once `size` requests are in the handler together: a client that keeps
        # fewer in flight breaks the barrier (the requests fail), one that lets more through shows in the peak.
        waves = threading.Barrier(size, timeout=300)

        def handler(request):
            waves.wait()
            return "ok"

        return handler

    with FakeOpenAIServer(answered_in_waves(4)) as server:
        b = _backend(server, max_concurrency=4)
        out = asyncio.run(fire(b, 12))
        assert out == [("", "ok")] * 12
        # 12 requests, 4 at a time (the server may see one more while an answered handler is still exiting)
        assert b.peak_in_flight == 4 and server.peak_in_flight >= 4
        b.close()
    with FakeOpenAIServer(answered_in_waves(12)) as server:
        b = _backend(server, max_concurrency=16)
        asyncio.run(fire(b, 12))
        assert server.peak_in_flight == 12
        b.close()


def test_sync_chat_inside_loop_is_refused():
    async def inner():
        with FakeOpenAIServer(lambda r: "ok") as server:
            with pytest.raises(RuntimeError, match="await achat"):
                _backend(server).chat(MSG)

    asyncio.run(inner())


def test_specs():
    assert parse_spec("openai:http://127.0.0.1:8000/v1#qwen3") == (
        "openai",
        {"base_url": "http://127.0.0.1:8000/v1", "model": "qwen3"},
    )
    assert parse_spec("local:/ckpt/dir") == ("local", {"ckpt": "/ckpt/dir"})
    for bad in ("openai:http://x/v1", "openai:ftp://x#m", "local:", "hf:foo", "nonsense"):
        with pytest.raises(SpecError):
            parse_spec(bad)
    b = backend_from_spec("openai:http://127.0.0.1:9/v1#m", max_concurrency=3, tokenizer="ignored")
    assert isinstance(b, OpenAICompatibleBackend) and b.max_concurrency == 3
    assert isinstance(b, Backend)  # the protocol
