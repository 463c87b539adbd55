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
    ("platform", "expected"), [("cpu", "xla"), ("gpu", "pallas"), ("cuda", "pallas"), ("tpu", "pallas")]
)
def test_auto_picks_pallas_on_accelerators_and_xla_on_cpu(platform, expected):
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
