"""Training losses: pure functions of logits or per-sequence log-probs, each returning `(loss, metrics)`.

The preference losses follow TRL's definitions (DPOTrainer, CPOTrainer with `loss_type="simpo"`,
ORPOTrainer), including the logged metrics, so numbers are comparable with runs made with TRL:

    rewards/chosen     mean of the chosen rewards          (DPO/IPO: β·(π_c − ref_c); SimPO/ORPO: β·π_c)
    rewards/rejected   mean of the rejected rewards
    rewards/accuracies share of pairs with chosen reward > rejected reward
    rewards/margins    mean of (chosen reward − rejected reward)

Inputs are per-pair vectors [P] (P = number of pairs): `pc`/`pr` are the policy's log-probs of the
chosen/rejected completion, `rc`/`rr` the reference model's. DPO takes *summed* completion log-probs;
SimPO and ORPO take *mean* (length-normalised) ones; IPO takes whatever the caller gives (TRL and our
trainer pass mean log-probs for IPO). Losses are means over pairs; with `weights` [P] (the trainer passes
0 for an empty padding pair, 1 otherwise) weighted means, and a pair of weight 0 adds nothing, not even
a NaN (ORPO's log-odds of an empty completion, log P = 0, would be inf − inf).

Inputs may be jax arrays (inside jit; computed in float32 or the arrays' dtype) or host numpy arrays
(computed with numpy in their own precision, so float64 inputs give float64 results).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["sft_loss", "dpo_loss", "ipo_loss", "simpo_loss", "orpo_loss", "log1mexp", "token_logprobs"]

# config.pref.loss: the preference losses below, by name (train/step.py dispatches on these names).
PREFERENCE_LOSSES = ("orpo", "dpo", "ipo", "simpo")


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [B, T, V], targets int [B, T] -> log p(target) float32 [B, T]."""
    logits = _f32(logits)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - lse


def sft_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, dict]:
    """Weighted token cross-entropy, normalised by the total weight.

    logits [B, T, V] (already aligned with `targets`: logits[:, t] predicts targets[:, t]),
    targets int [B, T], weights [B, T] (0 for prompt and padding tokens) -> (scalar loss, metrics).
    """
    weights = _f32(weights)
    logp = token_logprobs(logits, targets)
    total = jnp.sum(weights)
    denom = jnp.maximum(total, jnp.finfo(jnp.float32).tiny)
    loss = -jnp.sum(logp * weights) / denom
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "nll_loss": loss,
        "token_accuracy": jnp.sum(correct * weights) / denom,
        "loss_tokens": total,
    }
    return loss, metrics


def _xp(*arrays):
    """numpy for host float inputs (kept in their precision, e.g. float64), jax.numpy otherwise (traced)."""
    if all(isinstance(a, (np.ndarray, np.generic, float, int)) for a in arrays):
        return np
    return jnp


def _as(xp, x):
    if xp is np:
        x = np.asarray(x)
        return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)
    return jnp.asarray(x, jnp.float32) if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x)


def _log_sigmoid(xp, x):
    return -xp.logaddexp(0.0, -x)  # log σ(x) = −log(1 + e^−x), stable for both signs


def _pair_mean(xp, x, weights):
    """Mean over pairs, or the `weights`-weighted mean (0 when every weight is 0); a weight-0 entry is
    selected away rather than multiplied, so a non-finite value there cannot leak in."""
    if weights is None:
        return xp.mean(x)
    return xp.sum(xp.where(weights > 0, x * weights, 0.0)) / xp.maximum(xp.sum(weights), 1.0)


def _reward_metrics(xp, chosen_rewards, rejected_rewards, weights=None) -> dict:
    wins = (chosen_rewards > rejected_rewards).astype(chosen_rewards.dtype)
    return {
        "rewards/chosen": _pair_mean(xp, chosen_rewards, weights),
        "rewards/rejected": _pair_mean(xp, rejected_rewards, weights),
        "rewards/accuracies": _pair_mean(xp, wins, weights),
        "rewards/margins": _pair_mean(xp, chosen_rewards - rejected_rewards, weights),
    }


def _logp_metrics(xp, pc, pr, weights=None) -> dict:
    return {"logps/chosen": _pair_mean(xp, pc, weights), "logps/rejected": _pair_mean(xp, pr, weights)}


def dpo_loss(pc, pr, rc, rr, beta: float = 0.1, label_smoothing: float = 0.0, weights=None) -> tuple:
    """DPO (sigmoid loss, optionally conservative with `label_smoothing`) on summed completion log-probs.

    loss = mean[ −(1−ε)·log σ(β·h) − ε·log σ(−β·h) ],  h = (pc − pr) − (rc − rr).
    """
    xp = _xp(pc, pr, rc, rr)
    pc, pr, rc, rr = (_as(xp, a) for a in (pc, pr, rc, rr))
    h = (pc - pr) - (rc - rr)
    losses = -_log_sigmoid(xp, beta * h) * (1.0 - label_smoothing) - _log_sigmoid(xp, -beta * h) * label_smoothing
    loss = _pair_mean(xp, losses, weights)
    metrics = (
        {"loss": loss}
        | _reward_metrics(xp, beta * (pc - rc), beta * (pr - rr), weights)
        | _logp_metrics(xp, pc, pr, weights)
    )
    return loss, metrics


def ipo_loss(pc, pr, rc, rr, beta: float, weights=None) -> tuple:
    """IPO: loss = mean[(h − 1/(2β))²],  h = (pc − pr) − (rc − rr); rewards as in DPO."""
    xp = _xp(pc, pr, rc, rr)
    pc, pr, rc, rr = (_as(xp, a) for a in (pc, pr, rc, rr))
    h = (pc - pr) - (rc - rr)
    loss = _pair_mean(xp, xp.square(h - 1.0 / (2.0 * beta)), weights)
    metrics = (
        {"loss": loss}
        | _reward_metrics(xp, beta * (pc - rc), beta * (pr - rr), weights)
        | _logp_metrics(xp, pc, pr, weights)
    )
    return loss, metrics


def simpo_loss(pc_avg, pr_avg, beta: float, gamma: float, weights=None) -> tuple:
    """SimPO on mean completion log-probs: loss = mean[ −log σ(β·(pc_avg − pr_avg) − γ) ].

    `gamma` is the target reward margin (TRL's `simpo_gamma`); rewards are β·pc_avg and β·pr_avg.
    """
    xp = _xp(pc_avg, pr_avg)
    pc, pr = _as(xp, pc_avg), _as(xp, pr_avg)
    loss = _pair_mean(xp, -_log_sigmoid(xp, beta * (pc - pr) - gamma), weights)
    metrics = {"loss": loss} | _reward_metrics(xp, beta * pc, beta * pr, weights) | _logp_metrics(xp, pc, pr, weights)
    return loss, metrics


def log1mexp(x):
    """log(1 − exp(x)) for x ≤ 0, accurate everywhere (Mächler 2012): expm1 near 0, log1p far from it."""
    xp = _xp(x)
    x = _as(xp, x)
    near_zero = x > -np.log(2.0)
    # Evaluate each branch only where it is accurate so that neither produces NaN gradients elsewhere.
    safe_near = xp.where(near_zero, x, -1.0)
    safe_far = xp.where(near_zero, -1.0, x)
    return xp.where(near_zero, xp.log(-xp.expm1(safe_near)), xp.log1p(-xp.exp(safe_far)))


def orpo_loss(pc_avg, pr_avg, chosen_nll, lam: float = 0.1, weights=None) -> tuple:
    """ORPO: loss = NLL(chosen) − λ·mean[log σ(log odds(chosen) − log odds(rejected))].

    `pc_avg`, `pr_avg` [P]: mean completion log-probs (log P of a completion, length-normalised);
    log odds(y) = log P − log(1 − P), with log(1 − P) computed stably by `log1mexp`.
    `chosen_nll`: the cross-entropy of the chosen completions (a scalar, or per pair [P], then averaged).
    Metrics as TRL: rewards = λ·(pc_avg, pr_avg); `log_odds_ratio` = mean log σ(·); `log_odds_chosen` =
    mean log-odds difference; `nll_loss`.
    """
    xp = _xp(pc_avg, pr_avg, chosen_nll)
    pc, pr = _as(xp, pc_avg), _as(xp, pr_avg)
    nll = xp.mean(_as(xp, chosen_nll))
    # A weight-0 pair's log-probs are replaced before log1mexp: its gradient would be NaN, not 0.
    safe = (lambda x: x) if weights is None else (lambda x: xp.where(weights > 0, x, -1.0))
    log_odds = (pc - pr) - (log1mexp(safe(pc)) - log1mexp(safe(pr)))
    ratio = _log_sigmoid(xp, log_odds)
    mean_ratio = _pair_mean(xp, ratio, weights)
    loss = nll - lam * mean_ratio
    metrics = (
        {"loss": loss, "nll_loss": nll, "log_odds_ratio": mean_ratio}
        | {"log_odds_chosen": _pair_mean(xp, log_odds, weights)}
        | _reward_metrics(xp, lam * pc, lam * pr, weights)
        | _logp_metrics(xp, pc, pr, weights)
    )
    return loss, metrics
