"""Prompt sharing (`train.batches.share_prompts`): one row per pair gives the same losses, metrics and
gradients as the [P, 2, T] chosen/rejected rows, with fewer tokens."""

import jax
import ml_collections
import numpy as np
import pytest

from oyster_jax import models
from oyster_jax.train import batches as batches_lib
from oyster_jax.train import config as config_lib
from oyster_jax.train import step as step_lib
from oyster_jax.train.batches import DataError, resolve_shared_len, share_prompts

CFG = models.ModelConfig(
    arch="qwen3", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
)  # fmt: skip
T = 24


def _pairs(seed=0):
    """Pairs of different prompt and completion lengths (one with no rejected tail, one empty pair), padded."""
    rng = np.random.default_rng(seed)
    lengths = [(5, 9, 4), (1, 6, 11), (11, 2, 1), (7, 13, 10), (0, 0, 0)]  # (prompt, chosen, rejected)
    P = len(lengths)
    batch = {k: np.zeros((P, 2, T), np.int32) for k in ("tokens", "completion_mask", "segment_ids", "positions")}
    for i, (lp, lc, lr) in enumerate(lengths):
        prompt = rng.integers(1, 61, lp)
        for j, comp in enumerate((rng.integers(1, 61, lc), rng.integers(1, 61, lr))):
            n = lp + len(comp)
            batch["tokens"][i, j, :n] = np.concatenate([prompt, comp])
            batch["completion_mask"][i, j, lp:n] = 1
            batch["segment_ids"][i, j, :n] = 1
            batch["positions"][i, j, :n] = np.arange(n)
    batch["completion_mask"][3, 0, 9] = 0  # a completion token that is not trained on
    return batch


def _stage(loss, **kw):
    return ml_collections.ConfigDict(
        dict(loss=loss, logits_chunk=0, orpo_lambda=0.1, beta=0.1, simpo_gamma=0.5, label_smoothing=0.0, **kw)
    )


def _run(cfg, stage, batch, params, ref_params):
    totals = step_lib._batch_totals("pref", batch, bool(stage.get("nll_on_prompt", False)))

    def loss(p):
        return step_lib.pref_microbatch_loss(cfg, stage, p, batch, totals, 1, ref_params)

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, metrics, grads


def _assert_same(got, want):
    (v1, m1, g1), (v0, m0, g0) = got, want
    for name, x in [("loss", v0)] + list(m0.items()) + list(jax.tree_util.tree_leaves_with_path(g0)):
        assert np.all(np.isfinite(x)), f"{name}: not finite"  # NaN == NaN would pass assert_allclose
    np.testing.assert_allclose(v1, v0, rtol=2e-5, atol=1e-6)
    for k in m0:
        np.testing.assert_allclose(m1[k], m0[k], rtol=2e-5, atol=2e-6, err_msg=k)
    flat0 = dict(jax.tree_util.tree_leaves_with_path(g0))
    flat1 = dict(jax.tree_util.tree_leaves_with_path(g1))
    for path, a in flat0.items():
        scale = float(np.max(np.abs(a))) or 1.0
        np.testing.assert_allclose(flat1[path], a, rtol=0, atol=2e-5 * scale, err_msg=jax.tree_util.keystr(path))
    assert float(v0) != 0.0


STAGES = [_stage("orpo"), _stage("orpo", nll_on_prompt=True), _stage("simpo"), _stage("dpo"), _stage("ipo")]
STAGE_IDS = ["orpo", "orpo_nll_on_prompt", "simpo", "dpo", "ipo"]


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
def test_an_empty_pair_changes_nothing(stage):
    """Batch padding (a pair with no tokens) is left out of every mean over pairs, and yields no NaN."""
    params = models.init_params(CFG, jax.random.key(0))
    ref_params = models.init_params(CFG, jax.random.key(1))
    pairs = _pairs()
    assert not pairs["segment_ids"][-1].any()  # the last pair is the empty one
    without = {k: v[:-1] for k, v in pairs.items()}
    _assert_same(_run(CFG, stage, pairs, params, ref_params), _run(CFG, stage, without, params, ref_params))


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_IDS)
def test_shared_rows_give_the_same_loss_metrics_and_gradients(stage):
    params = models.init_params(CFG, jax.random.key(0))
    ref_params = models.init_params(CFG, jax.random.key(1))
    pairs = _pairs()
    shared = share_prompts(pairs, shared_len=30)
    assert shared["tokens"].shape == (5, 30)  # 5 x 30 tokens instead of 5 x 2 x 24
    _assert_same(_run(CFG, stage, shared, params, ref_params), _run(CFG, stage, pairs, params, ref_params))


def test_shared_rows_through_the_flash_kernel_match_two_rows():
    """The Pallas kernel masks branches itself (interpreted here): shared rows need not fall back to xla."""
    stage = _stage("orpo")
    params = models.init_params(CFG, jax.random.key(0))
    shared = share_prompts(_pairs(), shared_len=30)
    got = _run(CFG.replace(attention_impl="pallas"), stage, shared, params, None)
    _assert_same(got, _run(CFG, stage, _pairs(), params, None))


def test_pairs_that_do_not_fit_or_do_not_share_a_prompt_are_refused():
    pairs = _pairs()
    with pytest.raises(DataError, match=r"pair 3: prompt 7 \+ chosen 13 \+ rejected 10 tokens = 30 > 29"):
        share_prompts(pairs, shared_len=29)
    pairs["tokens"][1, 1, 0] += 1
    with pytest.raises(DataError, match="pair 1: chosen and rejected prompts differ"):
        share_prompts(pairs, shared_len=30)


def test_resolve_shared_len():
    assert resolve_shared_len(0, 500, 256, "t") == 0  # off
    assert resolve_shared_len(300, 300, 256, "t") == 300  # fixed and long enough
    assert resolve_shared_len(-1, 258, 192, "t") == 320  # auto: the longest pair rounded up to 64
    assert resolve_shared_len(-1, 64, 192, "t") == 64
    assert resolve_shared_len(-1, 500, 256, "t") == 0  # 512 would be no shorter than two rows of 256
    with pytest.raises(DataError, match=r"task 't'.*needs 301 tokens.*pref_shared_len=300"):
        resolve_shared_len(300, 301, 256, "t")
    with pytest.raises(DataError, match="use 0 .off., -1 .auto."):
        resolve_shared_len(-2, 10, 256, "t")


def _tiny_csa(**overrides):
    config = config_lib.load_experiment("configs/experiments/tiny_csa.py")
    for key, value in overrides.items():
        config.data[key] = value
    return config, config_lib.model_config(config)


def test_a_short_shared_row_fails_when_the_iterator_is_made_not_at_the_long_pair():
    config, cfg = _tiny_csa(pref_shared_len=128)
    longest = int(
        batches_lib.make_train_iterator(_tiny_csa(pref_shared_len=0)[0], "pref", cfg).rows.shared_row_lengths().max()
    )
    with pytest.raises(DataError, match=f"needs {longest} tokens.*pref_shared_len=128"):
        batches_lib.make_train_iterator(config, "pref", cfg)
    config, cfg = _tiny_csa(pref_shared_len=-1)
    it = batches_lib.make_train_iterator(config, "pref", cfg)
    assert it.shared_len == -(-longest // 64) * 64 and it.shared_len < 2 * config.data.pref_seq_len
    assert next(it)["tokens"].shape == (config.pref.batch_size, it.shared_len)
