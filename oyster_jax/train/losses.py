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
trainer pass mean log-probs for IPO). Losses are means over pairs.

Inputs may be jax arrays (inside jit; computed in float32 or the arrays' dtype) or host numpy arrays
(computed with numpy in their own precision, so float64 inputs give float64 results).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["sft_loss", "dpo_loss", "ipo_loss", "simpo_loss", "orpo_loss", "log1mexp", "token_logprobs"]


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


def _reward_metrics(xp, chosen_rewards, rejected_rewards) -> dict:
    return {
        "rewards/chosen": xp.mean(chosen_rewards),
        "rewards/rejected": xp.mean(rejected_rewards),
        "rewards/accuracies": xp.mean((chosen_rewards > rejected_rewards).astype(chosen_rewards.dtype)),
        "rewards/margins": xp.mean(chosen_rewards - rejected_rewards),
    }


def _logp_metrics(xp, pc, pr) -> dict:
    return {"logps/chosen": xp.mean(pc), "logps/rejected": xp.mean(pr)}


def dpo_loss(pc, pr, rc, rr, beta: float = 0.1, label_smoothing: float = 0.0) -> tuple:
    """DPO (sigmoid loss, optionally conservative with `label_smoothing`) on summed completion log-probs.

    loss = mean[ −(1−ε)·log σ(β·h) − ε·log σ(−β·h) ],  h = (pc − pr) − (rc − rr).
    """
    xp = _xp(pc, pr, rc, rr)
    pc, pr, rc, rr = (_as(xp, a) for a in (pc, pr, rc, rr))
    h = (pc - pr) - (rc - rr)
    losses = -_log_sigmoid(xp, beta * h) * (1.0 - label_smoothing) - _log_sigmoid(xp, -beta * h) * label_smoothing
    loss = xp.mean(losses)
    metrics = {"loss": loss} | _reward_metrics(xp, beta * (pc - rc), beta * (pr - rr)) | _logp_metrics(xp, pc, pr)
    return loss, metrics


def ipo_loss(pc, pr, rc, rr, beta: float) -> tuple:
    """IPO: loss = mean[(h − 1/(2β))²],  h = (pc − pr) − (rc − rr); rewards as in DPO."""
    xp = _xp(pc, pr, rc, rr)
    pc, pr, rc, rr = (_as(xp, a) for a in (pc, pr, rc, rr))
    h = (pc - pr) - (rc - rr)
    loss = xp.mean(xp.square(h - 1.0 / (2.0 * beta)))
    metrics = {"loss": loss} | _reward_metrics(xp, beta * (pc - rc), beta * (pr - rr)) | _logp_metrics(xp, pc, pr)
    return loss, metrics


def simpo_loss(pc_avg, pr_avg, beta: float, gamma: float) -> tuple:
    """SimPO on mean completion log-probs: loss = mean[ −log σ(β·(pc_avg − pr_avg) − γ) ].

    `gamma` is the target reward margin (TRL's `simpo_gamma`); rewards are β·pc_avg and β·pr_avg.
    """
    xp = _xp(pc_avg, pr_avg)
    pc, pr = _as(xp, pc_avg), _as(xp, pr_avg)
    loss = xp.mean(-_log_sigmoid(xp, beta * (pc - pr) - gamma))
    metrics = {"loss": loss} | _reward_metrics(xp, beta * pc, beta * pr) | _logp_metrics(xp, pc, pr)
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


def orpo_loss(pc_avg, pr_avg, chosen_nll, lam: float = 0.1) -> tuple:
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
    log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr))
    ratio = _log_sigmoid(xp, log_odds)
    loss = nll - lam * xp.mean(ratio)
    metrics = (
        {"loss": loss, "nll_loss": nll, "log_odds_ratio": xp.mean(ratio), "log_odds_chosen": xp.mean(log_odds)}
        | _reward_metrics(xp, lam * pc, lam * pr)
        | _logp_metrics(xp, pc, pr)
    )
    return loss, metrics
