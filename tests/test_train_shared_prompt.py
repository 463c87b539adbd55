"""Prompt sharing (`data.layouts.SharedPrompt`): one row per pair gives the same losses, metrics and
gradients as the [P, 2, T] chosen/rejected rows (`data.layouts.TwoRows`) of the same pairs, with fewer tokens."""

import jax
import numpy as np
import pytest

from oyster_jax import models
from oyster_jax.data.layouts import SharedPrompt, TwoRows
from oyster_jax.train import batches as batches_lib
from oyster_jax.train import config as config_lib
from oyster_jax.train import stage as stage_lib
from oyster_jax.train import step as step_lib
from oyster_jax.train.batches import DataError, resolve_shared_len

CFG = models.ModelConfig(
    arch="qwen3", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
)  # fmt: skip
T = 24


LENGTHS = [(5, 9, 4), (1, 6, 11), (11, 2, 1), (7, 13, 10), (0, 0, 0)]  # (prompt, chosen, rejected) tokens


def _triples(seed=0):
    """Pairs of different prompt and completion lengths (one with a one-token rejected tail, one empty)."""
    rng = np.random.default_rng(seed)
    return [tuple(rng.integers(1, 61, n).astype(np.int32) for n in lengths) for lengths in LENGTHS]


def _pairs(seed=0):
    return TwoRows(len(LENGTHS), T).build(_triples(seed))


def _stage(loss, **kw):
    return stage_lib.hyper_from_config(config_lib.pref_defaults(loss=loss, **kw), "pref")


def _run(cfg, stage, batch, params, ref_params):
    totals = step_lib._batch_totals(stage, batch)

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
    shared = SharedPrompt(len(LENGTHS), 30).build(_triples())
    assert shared["tokens"].shape == (5, 30)  # 5 x 30 tokens instead of 5 x 2 x 24
    _assert_same(_run(CFG, stage, shared, params, ref_params), _run(CFG, stage, pairs, params, ref_params))


def test_shared_rows_through_the_flash_kernel_match_two_rows():
    """The Pallas kernel masks branches itself (interpreted here): shared rows need not fall back to xla."""
    stage = _stage("orpo")
    params = models.init_params(CFG, jax.random.key(0))
    shared = SharedPrompt(len(LENGTHS), 30).build(_triples())
    got = _run(CFG.replace(attention_impl="pallas"), stage, shared, params, None)
    _assert_same(got, _run(CFG, stage, _pairs(), params, None))


def test_pairs_that_do_not_fit_are_refused_naming_the_pair():
    with pytest.raises(DataError, match=r"pair 3: prompt 7 \+ chosen 13 \+ rejected 10 tokens = 30 > 29"):
        SharedPrompt(len(LENGTHS), 29).build(_triples())


def test_layouts_hand_checked_and_their_shapes_are_their_specs():
    """One pair laid out both ways, checked by hand; `spec()` gives exactly the built shapes and dtypes."""
    prompt, chosen, rejected = np.array([7, 8, 9]), np.array([21, 22]), np.array([31, 32, 33])
    two = TwoRows(2, 8, pad_id=5).build([(prompt, chosen, rejected)])
    np.testing.assert_array_equal(two["tokens"][0], [[7, 8, 9, 21, 22, 5, 5, 5], [7, 8, 9, 31, 32, 33, 5, 5]])
    np.testing.assert_array_equal(two["completion_mask"][0], [[0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(two["positions"][0, 1], [0, 1, 2, 3, 4, 5, 0, 0])
    assert not two["segment_ids"][1].any() and (two["tokens"][1] == 5).all()  # the padding pair
    one = SharedPrompt(2, 10).build([(prompt, chosen, rejected)])
    np.testing.assert_array_equal(one["tokens"][0], [7, 8, 9, 21, 22, 31, 32, 33, 0, 0])
    np.testing.assert_array_equal(one["positions"][0], [0, 1, 2, 3, 4, 3, 4, 5, 0, 0])
    np.testing.assert_array_equal(one["branch_ids"][0], [0, 0, 0, 1, 1, 2, 2, 2, 0, 0])
    # Position t predicts t + 1 of its branch: 9 -> 21 and 21 -> 22 (chosen); 31 -> 32, 32 -> 33 (rejected).
    np.testing.assert_array_equal(one["chosen_weights"][0], [0, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(one["rejected_weights"][0], [0, 0, 0, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(one["rejected_all_weights"][0], [1, 1, 0, 0, 0, 1, 1, 0, 0, 0])
    assert (one["fork_index"][0], one["fork_target"][0], one["fork_weight"][0]) == (2, 31, 1.0)  # 9 -> 31
    for layout, batch in ((TwoRows(2, 8), two), (SharedPrompt(2, 10), one)):
        spec = layout.spec()
        assert set(spec) == set(batch)
        for k, v in batch.items():
            assert (spec[k].shape, spec[k].dtype) == (v.shape, v.dtype), k


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


def _iterator(config):
    return batches_lib.make_train_iterator(stage_lib.describe(config, "pref"))


def test_a_short_shared_row_fails_when_the_iterator_is_made_not_at_the_long_pair():
    longest = int(_iterator(_tiny_csa(pref_shared_len=0)[0]).shared_row_lengths().max())
    with pytest.raises(DataError, match=f"needs {longest} tokens.*pref_shared_len=128"):
        _iterator(_tiny_csa(pref_shared_len=128)[0])
    config, _ = _tiny_csa(pref_shared_len=-1)
    it = _iterator(config)
    assert it.layout.row_len == -(-longest // 64) * 64 and it.layout.row_len < 2 * config.data.pref_seq_len
    assert next(it)["tokens"].shape == (config.pref.batch_size, it.layout.row_len)


def test_the_abstract_batch_is_what_the_iterator_yields():
    """The AOT path's shapes (no data read) equal the trainer's batches, for both layouts."""
    from oyster_jax.train import trainer

    for shared in (0, 264):
        spec = stage_lib.describe(_tiny_csa(pref_shared_len=shared)[0], "pref")
        batch = next(batches_lib.make_train_iterator(spec))
        abstract = trainer.abstract_batch(spec)
        assert {k: (v.shape, v.dtype) for k, v in abstract.items()} == {k: (v.shape, v.dtype) for k, v in batch.items()}
