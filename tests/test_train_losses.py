"""Training losses against hand-computed values and a float64 pure-Python transcription of TRL's formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oyster_jax.train import losses
from tests import tolerances as tol


def _logsig(x: float) -> float:  # float64 log σ(x), written out independently of JAX
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_sft_loss_hand_computed():
    # One row, vocab 2, logits (0, log 3): p(token 1) = 3/4. Targets 1, 0; weights 1, 0 -> loss = -log(3/4).
    logits = jnp.array([[[0.0, math.log(3.0)], [5.0, 0.0]]])
    loss, m = losses.sft_loss(logits, jnp.array([[1, 0]]), jnp.array([[1.0, 0.0]]))
    assert abs(float(loss) - (-math.log(0.75))) < 1e-6
    assert float(m["token_accuracy"]) == 1.0 and float(m["loss_tokens"]) == 1.0
    # Weights normalise: both tokens weighted -> mean of -log(3/4) and -log(e^5/(e^5+1)).
    loss2, _ = losses.sft_loss(logits, jnp.array([[1, 0]]), jnp.array([[1.0, 1.0]]))
    expected = 0.5 * (-math.log(0.75) + math.log1p(math.exp(-5.0)))
    assert abs(float(loss2) - expected) < 1e-6


def test_dpo_hand_computed():
    # h = (pc - pr) - (rc - rr) = (-1 + 2) - 0 = 1; loss = -log σ(0.1) = log(1 + e^-0.1).
    loss, m = losses.dpo_loss(jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.5]), beta=0.1)
    assert abs(float(loss) - math.log1p(math.exp(-0.1))) < 1e-6
    assert abs(float(m["rewards/chosen"]) - 0.05) < 1e-7
    assert abs(float(m["rewards/rejected"]) + 0.05) < 1e-7
    assert float(m["rewards/accuracies"]) == 1.0
    assert abs(float(m["rewards/margins"]) - 0.1) < 1e-7
    # Conservative DPO, ε = 0.25: 0.75·log(1+e^-0.1) + 0.25·log(1+e^0.1).
    loss_ls, _ = losses.dpo_loss(
        jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.5]), beta=0.1, label_smoothing=0.25
    )
    assert abs(float(loss_ls) - (0.75 * math.log1p(math.exp(-0.1)) + 0.25 * math.log1p(math.exp(0.1)))) < 1e-6


def test_ipo_hand_computed():
    # h = 1, β = 0.25 -> (1 - 1/(2·0.25))² = (1 - 2)² = 1.
    loss, m = losses.ipo_loss(jnp.array([-1.0]), jnp.array([-2.0]), jnp.array([-1.5]), jnp.array([-1.5]), beta=0.25)
    assert abs(float(loss) - 1.0) < 1e-6
    assert abs(float(m["rewards/margins"]) - 0.25) < 1e-7


def test_simpo_hand_computed():
    # β = 2, γ = 0.5: -log σ(2·(−0.5 + 1.0) − 0.5) = -log σ(0.5) = log(1 + e^-0.5); rewards 2·(−0.5), 2·(−1).
    loss, m = losses.simpo_loss(jnp.array([-0.5]), jnp.array([-1.0]), beta=2.0, gamma=0.5)
    assert abs(float(loss) - math.log1p(math.exp(-0.5))) < 1e-6
    assert abs(float(m["rewards/chosen"]) + 1.0) < 1e-7 and abs(float(m["rewards/rejected"]) + 2.0) < 1e-7


def test_orpo_hand_computed():
    # P_c = 1/2, P_r = 1/4: odds 1 and 1/3, log odds ratio = log 3; L_OR = -log σ(log 3) = -log(3/4).
    pc, pr = math.log(0.5), math.log(0.25)
    loss, m = losses.orpo_loss(jnp.array([pc]), jnp.array([pr]), jnp.array(2.0), lam=0.1)
    assert abs(float(m["log_odds_chosen"]) - math.log(3.0)) < 1e-6
    assert abs(float(m["log_odds_ratio"]) - math.log(0.75)) < 1e-6
    assert abs(float(loss) - (2.0 - 0.1 * math.log(0.75))) < 1e-6
    assert abs(float(m["nll_loss"]) - 2.0) < 1e-7
    assert abs(float(m["rewards/chosen"]) - 0.1 * pc) < 1e-7
    assert float(m["rewards/accuracies"]) == 1.0


def test_log1mexp_stable_values_and_gradients():
    x = jnp.array([-1e-7, -1e-3, -0.5, -math.log(2.0), -1.0, -30.0, -100.0])
    got = np.asarray(losses.log1mexp(x), np.float64)
    # float64 reference: log(-expm1(x)) is exact near 0, log1p(-exp(x)) far from it (each fails the other side).
    xs = np.asarray(x, np.float64)
    want = np.array([math.log(-math.expm1(v)) if v > -0.5 else math.log1p(-math.exp(v)) for v in xs])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-37)  # atol: float32 flushes denormals (e^-100)
    grads = jax.grad(lambda v: jnp.sum(losses.log1mexp(v)))(x)
    assert np.all(np.isfinite(np.asarray(grads)))
    # The naive log1p(-exp(x)) loses everything at x = -1e-7 in float32; the stable one does not.
    assert np.isfinite(got[0]) and abs(got[0] - math.log(1e-7)) < 1e-3


def _trl_reference(kind, pc, pr, rc, rr, nll, beta, extra):
    """float64 transcription of TRL's per-pair formulas (independent of oyster_jax.train.losses)."""
    n = len(pc)
    rows, ch, rj = [], [], []
    for i in range(n):
        if kind in ("dpo", "ipo"):
            h = (pc[i] - pr[i]) - (rc[i] - rr[i])
            if kind == "dpo":
                ls = extra
                rows.append(-_logsig(beta * h) * (1 - ls) - _logsig(-beta * h) * ls)
            else:
                rows.append((h - 1 / (2 * beta)) ** 2)
            ch.append(beta * (pc[i] - rc[i]))
            rj.append(beta * (pr[i] - rr[i]))
        elif kind == "simpo":
            rows.append(-_logsig(beta * (pc[i] - pr[i]) - extra))
            ch.append(beta * pc[i])
            rj.append(beta * pr[i])
        else:  # orpo, TRL: log_odds = (pc - pr) - (log1p(-exp(pc)) - log1p(-exp(pr)))
            log_odds = (pc[i] - pr[i]) - (math.log1p(-math.exp(pc[i])) - math.log1p(-math.exp(pr[i])))
            rows.append(_logsig(log_odds))
            ch.append(beta * pc[i])
            rj.append(beta * pr[i])
    mean = sum(rows) / n
    loss = nll - beta * mean if kind == "orpo" else mean
    return loss, {
        "rewards/chosen": sum(ch) / n,
        "rewards/rejected": sum(rj) / n,
        "rewards/accuracies": sum(c > r for c, r in zip(ch, rj)) / n,
        "rewards/margins": sum(c - r for c, r in zip(ch, rj)) / n,
    }


@pytest.mark.parametrize("kind", ["dpo", "ipo", "simpo", "orpo"])
def test_losses_match_trl_formulas_on_random_inputs(kind):
    rng = np.random.default_rng({"dpo": 0, "ipo": 1, "simpo": 2, "orpo": 3}[kind])
    n = 16
    if kind in ("dpo", "ipo"):  # summed log-probs
        pc, pr, rc, rr = (-rng.uniform(5, 60, n) for _ in range(4))
    else:  # mean log-probs
        pc, pr, rc, rr = (-rng.uniform(0.05, 3.0, n) for _ in range(4))
    # Inputs are float32 in the trainer: compare on the float32-rounded values.
    pc, pr, rc, rr = (np.asarray(a, np.float32).astype(np.float64) for a in (pc, pr, rc, rr))
    nll = float(np.float32(1.7))
    beta, extra = {"dpo": (0.1, 0.1), "ipo": (0.5, None), "simpo": (2.0, 0.5), "orpo": (0.1, None)}[kind]
    if kind == "dpo":
        loss, m = losses.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=extra)
    elif kind == "ipo":
        loss, m = losses.ipo_loss(pc, pr, rc, rr, beta=beta)
    elif kind == "simpo":
        loss, m = losses.simpo_loss(pc, pr, beta=beta, gamma=extra)
    else:
        loss, m = losses.orpo_loss(pc, pr, nll, lam=beta)
    want_loss, want = _trl_reference(kind, pc, pr, rc, rr, nll, beta, extra)
    scale = max(1.0, abs(want_loss))  # float32 arithmetic: compare relative to the magnitude
    assert abs(float(loss) - want_loss) <= tol.LOSS_VS_TRL * scale, (float(loss), want_loss)
    for key, value in want.items():
        assert abs(float(m[key]) - value) <= tol.LOSS_VS_TRL * max(1.0, abs(value)), key
