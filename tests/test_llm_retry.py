"""The one retry policy: how many calls, which errors, how long between them (no real waiting)."""

import asyncio
import random

import pytest

from oyster_jax.llm import OpenAICompatibleBackend
from oyster_jax.llm import retry as retry_lib
from oyster_jax.llm.base import BackendError
from oyster_jax.llm.retry import RetryPolicy, transient


class Flaky:
    """Raises the given errors in order, then returns 'ok'; records the attempt numbers it saw."""

    def __init__(self, *errors):
        self.errors, self.seen = list(errors), []

    async def __call__(self, attempt):
        self.seen.append(attempt)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.fixture
def waits(monkeypatch):
    """The delays the policy asked for, instead of sleeping them."""
    recorded = []

    async def fake_sleep(seconds):
        recorded.append(seconds)

    monkeypatch.setattr(retry_lib.asyncio, "sleep", fake_sleep)
    return recorded


def test_which_errors_are_transient():
    assert transient(BackendError("HTTP 503", retryable=True, status=503))
    assert not transient(BackendError("HTTP 400", retryable=False, status=400))
    assert not transient(ValueError("bad sampling keyword"))
    assert not transient(TimeoutError())  # only what a backend has classified


def test_retries_transient_errors_then_succeeds(waits):
    fn = Flaky(BackendError("a", retryable=True), BackendError("b", retryable=True))
    retried = []
    policy = RetryPolicy(retries=2, backoff_base=1.0, backoff_max=30.0)
    assert asyncio.run(policy.call(fn, on_retry=lambda e, k: retried.append((str(e), k)))) == "ok"
    assert fn.seen == [0, 1, 2] and retried == [("a", 0), ("b", 1)]
    assert len(waits) == 2 and 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0  # base * 2**k * U(0.5, 1)


def test_gives_up_after_the_last_retry_with_the_last_error(waits):
    fn = Flaky(*(BackendError(f"e{i}", retryable=True) for i in range(5)))
    with pytest.raises(BackendError, match="^e2$"):
        asyncio.run(RetryPolicy(retries=2).call(fn))
    assert fn.seen == [0, 1, 2] and len(waits) == 2
    assert RetryPolicy(retries=2).attempts == 3


def test_other_errors_propagate_at_once(waits):
    for error in (BackendError("HTTP 404", retryable=False, status=404), KeyError("bug")):
        fn = Flaky(error)
        with pytest.raises(type(error)):
            asyncio.run(RetryPolicy(retries=5).call(fn))
        assert fn.seen == [0] and waits == []


def test_custom_predicate_and_no_backoff(waits):
    policy = RetryPolicy(retries=3, backoff_base=0.0, backoff_max=0.0, retry_on=lambda e: isinstance(e, ValueError))
    fn = Flaky(ValueError("unparseable"), ValueError("unparseable"))
    assert asyncio.run(policy.call(fn)) == "ok" and fn.seen == [0, 1, 2]
    assert waits == []  # a zero wait does not sleep at all
    with pytest.raises(BackendError):
        asyncio.run(policy.call(Flaky(BackendError("x", retryable=True))))


def test_delay_arithmetic():
    policy = RetryPolicy(retries=10, backoff_base=1.0, backoff_max=30.0)
    rng, ref = random.Random(7), random.Random(7)
    for k in range(7):
        expected = min(30.0, 2.0**k) * ref.uniform(0.5, 1.0)  # 1, 2, 4, 8, 16, 30, 30 times the jitter
        assert policy.delay(k, rng=rng) == pytest.approx(expected)
    # Retry-After is honoured (even above the exponential wait) but never beyond backoff_max.
    assert policy.delay(0, retry_after=5.0, rng=random.Random(0)) == 5.0
    assert policy.delay(0, retry_after=100.0, rng=random.Random(0)) == 30.0
    jittered = 8.0 * random.Random(1).uniform(0.5, 1)
    assert policy.delay(3, retry_after=0.0, rng=random.Random(1)) == pytest.approx(jittered)


def test_retry_after_of_the_error_is_used(waits):
    fn = Flaky(BackendError("HTTP 429", retryable=True, status=429, retry_after=7.0))
    assert asyncio.run(RetryPolicy(retries=1, backoff_base=0.01).call(fn)) == "ok"
    assert waits == [7.0]


@pytest.mark.parametrize("kwargs", [{"retries": -1}, {"retries": 1.5}, {"retries": True}, {"backoff_base": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_the_http_backend_uses_the_policy():
    default = OpenAICompatibleBackend("http://127.0.0.1:9/v1", "m")
    assert default.retry == RetryPolicy()
    flags = OpenAICompatibleBackend("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_base=0.5)
    assert (flags.retry.retries, flags.retry.backoff_base, flags.retry.backoff_max) == (1, 0.5, 30.0)
