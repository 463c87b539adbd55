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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def _reward_metrics(chosen_rewards: jax.Array, rejected_rewards: jax.Array) -> dict:
    return {
        "rewards/chosen": jnp.mean(chosen_rewards),
        "rewards/rejected": jnp.mean(rejected_rewards),
        "rewards/accuracies": jnp.mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "rewards/margins": jnp.mean(chosen_rewards - rejected_rewards),
    }


def _logp_metrics(pc, pr) -> dict:
    return {"logps/chosen": jnp.mean(pc), "logps/rejected": jnp.mean(pr)}


def dpo_loss(pc, pr, rc, rr, beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """DPO (sigmoid loss, optionally conservative with `label_smoothing`) on summed completion log-probs.

    loss = mean[ −(1−ε)·log σ(β·h) − ε·log σ(−β·h) ],  h = (pc − pr) − (rc − rr).
    """
    pc, pr, rc, rr = map(_f32, (pc, pr, rc, rr))
    h = (pc - pr) - (rc - rr)
    losses = -jax.nn.log_sigmoid(beta * h) * (1.0 - label_smoothing) - jax.nn.log_sigmoid(-beta * h) * label_smoothing
    loss = jnp.mean(losses)
    metrics = {"loss": loss} | _reward_metrics(beta * (pc - rc), beta * (pr - rr)) | _logp_metrics(pc, pr)
    return loss, metrics


def ipo_loss(pc, pr, rc, rr, beta: float) -> tuple[jax.Array, dict]:
    """IPO: loss = mean[(h − 1/(2β))²],  h = (pc − pr) − (rc − rr); rewards as in DPO."""
    pc, pr, rc, rr = map(_f32, (pc, pr, rc, rr))
    h = (pc - pr) - (rc - rr)
    loss = jnp.mean(jnp.square(h - 1.0 / (2.0 * beta)))
    metrics = {"loss": loss} | _reward_metrics(beta * (pc - rc), beta * (pr - rr)) | _logp_metrics(pc, pr)
    return loss, metrics


def simpo_loss(pc_avg, pr_avg, beta: float, gamma: float) -> tuple[jax.Array, dict]:
    """SimPO on mean completion log-probs: loss = mean[ −log σ(β·(pc_avg − pr_avg) − γ) ].

    `gamma` is the target reward margin (TRL's `simpo_gamma`); rewards are β·pc_avg and β·pr_avg.
    """
    pc, pr = _f32(pc_avg), _f32(pr_avg)
    loss = jnp.mean(-jax.nn.log_sigmoid(beta * (pc - pr) - gamma))
    metrics = {"loss": loss} | _reward_metrics(beta * pc, beta * pr) | _logp_metrics(pc, pr)
    return loss, metrics


def log1mexp(x: jax.Array) -> jax.Array:
    """log(1 − exp(x)) for x ≤ 0, accurate everywhere (Mächler 2012): expm1 near 0, log1p far from it."""
    x = _f32(x)
    near_zero = x > -jnp.log(2.0)
    # Evaluate each branch only where it is accurate so that neither produces NaN gradients elsewhere.
    safe_near = jnp.where(near_zero, x, -1.0)
    safe_far = jnp.where(near_zero, -1.0, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(safe_near)), jnp.log1p(-jnp.exp(safe_far)))


def orpo_loss(pc_avg, pr_avg, chosen_nll, lam: float = 0.1) -> tuple[jax.Array, dict]:
    """ORPO: loss = NLL(chosen) − λ·mean[log σ(log odds(chosen) − log odds(rejected))].

    `pc_avg`, `pr_avg` [P]: mean completion log-probs (log P of a completion, length-normalised);
    log odds(y) = log P − log(1 − P), with log(1 − P) computed stably by `log1mexp`.
    `chosen_nll`: the cross-entropy of the chosen completions (a scalar, or per pair [P], then averaged).
    Metrics as TRL: rewards = λ·(pc_avg, pr_avg); `log_odds_ratio` = mean log σ(·); `log_odds_chosen` =
    mean log-odds difference; `nll_loss`.
    """
    pc, pr = _f32(pc_avg), _f32(pr_avg)
    nll = jnp.mean(_f32(chosen_nll))
    log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr))
    ratio = jax.nn.log_sigmoid(log_odds)
    loss = nll - lam * jnp.mean(ratio)
    metrics = (
        {"loss": loss, "nll_loss": nll, "log_odds_ratio": jnp.mean(ratio), "log_odds_chosen": jnp.mean(log_odds)}
        | _reward_metrics(lam * pc, lam * pr)
        | _logp_metrics(pc, pr)
    )
    return loss, metrics
