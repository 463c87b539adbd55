"""The train step against independent references: full-batch vs accumulated gradients, chunked vs plain
log-probs, the step's SFT/ORPO losses vs a direct computation from `models.forward`, bf16 and remat."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from oyster_jax import models
from oyster_jax.train import losses, optim
from oyster_jax.train import stage as stage_lib
from oyster_jax.train import step as step_lib
from oyster_jax.train.config import pref_defaults, stage_defaults

CFG = models.ModelConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16
)
P, T = 4, 24


def _pref_batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (P, 2, T)).astype(np.int32)
    lengths = rng.integers(12, T + 1, (P, 2))
    prompt = rng.integers(3, 8, (P,))
    seg = (np.arange(T)[None, None] < lengths[..., None]).astype(np.int32)
    mask = ((np.arange(T)[None, None] >= prompt[:, None, None]) & (seg > 0)).astype(np.int32)
    positions = np.broadcast_to(np.arange(T, dtype=np.int32), (P, 2, T)).copy()
    return {"tokens": tokens, "completion_mask": mask, "segment_ids": seg, "positions": positions}


def _sft_batch(seed=0):
    rng = np.random.default_rng(seed)
    B = 4
    tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    seg = np.ones((B, T), np.int32)
    seg[:, T // 2 :] = 2  # two packed documents per row
    seg[1, -5:] = 0  # padding
    positions = np.where(seg == 2, np.arange(T) - T // 2, np.arange(T)).astype(np.int32)
    positions[seg == 0] = 0
    weights = (rng.random((B, T)) > 0.3).astype(np.int32) * (seg > 0)
    return {"tokens": tokens, "loss_weights": weights, "segment_ids": seg, "positions": positions}


_RUNS = {}


def _run(kind, stage, batch, cfg=CFG, ref_params=None):
    """One jitted step from init; memoised so that tests sharing a configuration compile it once."""
    key = (
        kind,
        stage.to_json(sort_keys=True),
        cfg,
        ref_params is not None,
        tuple(np.asarray(batch["tokens"]).ravel()[:8]),
    )
    if key not in _RUNS:
        _RUNS[key] = _run_uncached(kind, stage, batch, cfg, ref_params)
    return _RUNS[key]


def _run_uncached(kind, stage, batch, cfg, ref_params):
    hp = stage_lib.hyper_from_config(stage, kind)
    opt = optim.make_optimizer(hp, 10)
    params = models.init_params(cfg, jax.random.key(0))
    state = step_lib.init_state(params, opt, jax.random.key(0))
    step = jax.jit(step_lib.make_train_step(cfg, hp, opt))
    return step(state, batch, ref_params) if ref_params is not None else step(state, batch)


def _close_trees(a, b, rtol, atol):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )


def test_sft_step_loss_equals_direct_cross_entropy():
    batch = _sft_batch()
    stage = stage_defaults(warmup_steps=0)
    _, metrics = _run("sft", stage, batch)
    # Independent: full logits, drop the last position, predict the next token within the same segment.
    params = models.init_params(CFG, jax.random.key(0))
    logits = models.forward(CFG, params, batch["tokens"], batch["positions"], batch["segment_ids"])
    seg = batch["segment_ids"]
    w = batch["loss_weights"][:, 1:] * (seg[:, 1:] == seg[:, :-1]) * (seg[:, 1:] > 0)
    want, _ = losses.sft_loss(logits[:, :-1], batch["tokens"][:, 1:], w)
    np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-6)


def _trl_orpo_reference(params, batch, lam, nll_on_prompt=False):
    """TRL ORPOTrainer's computation, in float64 numpy from full logits: token log-softmax, labels shifted,
    prompt masked; mean completion log-probs; NLL = token-mean CE over all chosen completion tokens."""
    rows = {k: v.reshape(2 * P, T) for k, v in batch.items()}
    logits = np.asarray(models.forward(CFG, params, rows["tokens"], rows["positions"], rows["segment_ids"]), np.float64)
    logits = logits[:, :-1]
    logp = (
        logits
        - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    labels = rows["tokens"][:, 1:]
    mask = rows["completion_mask"][:, 1:].astype(np.float64)
    tok = np.take_along_axis(logp, labels[..., None], -1)[..., 0]
    avg = (tok * mask).sum(-1) / mask.sum(-1)
    pc, pr = avg[0::2], avg[1::2]  # rows were [pair, (chosen, rejected)]
    chosen_rows = np.arange(2 * P) % 2 == 0
    # TRL's ORPOTrainer takes the NLL over every non-padding label of the chosen rows (prompt included).
    nll_mask = (rows["segment_ids"][:, 1:] > 0).astype(np.float64) if nll_on_prompt else mask
    nll = -(tok[chosen_rows] * nll_mask[chosen_rows]).sum() / nll_mask[chosen_rows].sum()
    log_odds = (pc - pr) - (np.log1p(-np.exp(pc)) - np.log1p(-np.exp(pr)))
    ratio = -np.log1p(np.exp(-log_odds))
    return nll - lam * ratio.mean(), {
        "nll_loss": nll,
        "log_odds_ratio": ratio.mean(),
        "rewards/margins": lam * (pc - pr).mean(),
    }


@pytest.mark.parametrize("nll_on_prompt", [False, True])
def test_orpo_step_matches_trl_style_reference(nll_on_prompt):
    batch = _pref_batch()
    stage = pref_defaults(warmup_steps=0, loss="orpo", orpo_lambda=0.1, nll_on_prompt=nll_on_prompt)
    _, metrics = _run("pref", stage, batch)
    params = models.init_params(CFG, jax.random.key(0))
    want_loss, want = _trl_orpo_reference(params, batch, 0.1, nll_on_prompt)
    np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
    for k, v in want.items():
        np.testing.assert_allclose(float(metrics[k]), v, rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind,loss", [("sft", None), ("pref", "orpo")])
def test_gradient_accumulation_equals_full_batch(kind, loss):
    batch = _sft_batch() if kind == "sft" else _pref_batch()
    base = stage_defaults(warmup_steps=0) if kind == "sft" else pref_defaults(warmup_steps=0, loss=loss)
    ref = models.init_params(CFG, jax.random.key(7)) if loss == "dpo" else None
    full_state, full_m = _run(kind, base, batch, ref_params=ref)
    acc = ml_collections.ConfigDict(base.to_dict())
    acc.microbatches = 2
    acc_state, acc_m = _run(kind, acc, batch, ref_params=ref)
    np.testing.assert_allclose(float(full_m["loss"]), float(acc_m["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(full_m["grad_norm"]), float(acc_m["grad_norm"]), rtol=1e-5)
    _close_trees(full_state["params"], acc_state["params"], rtol=1e-5, atol=1e-6)


def test_chunked_logprobs_equal_plain_values_and_gradients():
    params = models.init_params(CFG, jax.random.key(1))
    h = jax.random.normal(jax.random.key(2), (2, 16, CFG.hidden_size))
    targets = jax.random.randint(jax.random.key(3), (2, 16), 0, CFG.vocab_size)

    def f(p, chunk):
        return jnp.sum(step_lib.target_logprobs(CFG, p, h, targets, chunk) * jnp.arange(32.0).reshape(2, 16))

    np.testing.assert_allclose(f(params, 8), f(params, 0), rtol=1e-6)
    # Gradients are sums over 32 positions of O(1) terms: float32 summation order differs by ~1e-7.
    _close_trees(jax.grad(f)(params, 8), jax.grad(f)(params, 0), rtol=1e-5, atol=1e-6)


def test_bf16_compute_keeps_f32_params_and_close_loss():
    batch = _sft_batch()
    stage = stage_defaults(warmup_steps=0)
    state32, m32 = _run("sft", stage, batch)
    state16, m16 = _run("sft", stage, batch, cfg=CFG.replace(dtype="bfloat16"))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state16["params"]))
    assert abs(float(m16["loss"]) - float(m32["loss"])) < 2e-2 * float(m32["loss"])


def test_remat_policies_give_the_same_gradients():
    batch = _pref_batch()
    stage = pref_defaults(warmup_steps=0)
    scanned = CFG.replace(scan_layers=True)
    plain, m0 = _run("pref", stage, batch, cfg=scanned)
    for policy in ("full",):
        rematted, m1 = _run("pref", stage, batch, cfg=scanned.replace(remat_policy=policy))
        np.testing.assert_allclose(float(m1["grad_norm"]), float(m0["grad_norm"]), rtol=1e-5)
        _close_trees(rematted["params"], plain["params"], rtol=1e-5, atol=1e-6)
