"""`attention_impl` dispatch: what `auto` picks where, the forced-backend errors, and the fallback warning."""

import importlib
import logging

import jax
import numpy as np
import pytest

from oyster_jax.models import AttentionBackendError, resolve_impl, xla_attention

# The module (the package re-exports a function of the same name).
attention_lib = importlib.import_module("oyster_jax.models.attention")


@pytest.mark.parametrize(
    ("platform", "expected"), [("cpu", "cpu_fused"), ("gpu", "pallas"), ("cuda", "pallas"), ("tpu", "pallas")]
)
def test_auto_picks_pallas_on_accelerators_and_the_fused_attention_on_cpu(platform, expected):
    assert resolve_impl("auto", platform) == expected


def test_forced_backends_that_cannot_run_raise():
    with pytest.raises(AttentionBackendError, match="cudnn.*NVIDIA GPU.*'cpu'"):
        resolve_impl("cudnn", "cpu")
    with pytest.raises(AttentionBackendError, match="unknown attention_impl='flash'"):
        resolve_impl("flash", "gpu")


def test_auto_falls_back_to_xla_with_one_warning_when_the_kernel_does_not_compile(monkeypatch, caplog):
    def broken_probe(dtype, head_dim):
        raise RuntimeError("Mosaic lowering failed: unsupported shape\nlong details")

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # what `auto` sees; the math still runs on CPU
    monkeypatch.setattr(attention_lib, "_compile_probe", broken_probe)
    attention_lib._pallas_problem.cache_clear()
    attention_lib._warn_once.cache_clear()
    q = jax.random.normal(jax.random.key(0), (2, 9, 4, 16))
    k = jax.random.normal(jax.random.key(1), (2, 9, 2, 16))
    v = jax.random.normal(jax.random.key(2), (2, 9, 2, 16))
    with caplog.at_level(logging.WARNING, logger=attention_lib.__name__):
        out = attention_lib.attention(q, k, v, impl="auto")
        attention_lib.attention(q, k, v, impl="auto")
    np.testing.assert_allclose(out, xla_attention(q, k, v), rtol=1e-5, atol=1e-5)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "falling back to xla" in warnings[0] and "Mosaic lowering failed: unsupported shape" in warnings[0]
    assert "long details" not in warnings[0]  # one line
    attention_lib._pallas_problem.cache_clear()
    attention_lib._warn_once.cache_clear()


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
def test_forced_names_mean_what_they_say_everywhere(platform):
    # "xla" is the plain reference attention on every platform (never the CPU-fused one), and the fused
    # attention runs wherever it is asked for by its own name.
    assert resolve_impl("xla", platform) == "xla"
    assert resolve_impl("cpu_fused", platform) == "cpu_fused"
    assert resolve_impl("pallas", platform) == "pallas"


def test_every_name_dispatches_to_its_own_function(monkeypatch):
    q = jax.random.normal(jax.random.key(0), (1, 8, 2, 16))
    k = jax.random.normal(jax.random.key(1), (1, 8, 1, 16))
    called = []
    for name in ("xla", "cpu_fused", "pallas"):
        real = attention_lib._BACKENDS[name]
        monkeypatch.setitem(
            attention_lib._BACKENDS, name, lambda *a, _n=name, _f=real, **kw: called.append(_n) or _f(*a, **kw)
        )
    for impl in ("xla", "cpu_fused", "pallas", "auto"):
        out = attention_lib.attention(q, k, k, impl=impl)
        np.testing.assert_allclose(out, xla_attention(q, k, k), rtol=1e-5, atol=1e-5)
    assert called == ["xla", "cpu_fused", "pallas", "cpu_fused"]  # auto on this CPU: the fused attention
    assert attention_lib.ATTENTION_IMPLS == ("auto", "xla", "cpu_fused", "pallas", "cudnn")
