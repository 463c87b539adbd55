"""Held-out preference accuracy: the share of pairs whose chosen completion has the higher mean log-prob."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from oyster_jax import models
from oyster_jax.data import metrics as data_metrics
from oyster_jax.train.step import pair_logprobs


@functools.lru_cache(maxsize=16)
def make_pair_logprobs(cfg: models.ModelConfig, logits_chunk: int = 0):
    """-> jitted fn(params, batch [P, 2, T]) -> (mean completion log-prob [P, 2], completion tokens [P, 2]).

    One function per (cfg, logits_chunk), so every evaluation of the same model and batch shape (before and
    after training, a rerun that re-measures) reuses its compilation instead of tracing a new closure."""

    @jax.jit
    def mean_pair_logprobs(params, batch):
        sums, counts = pair_logprobs(cfg, params, batch, logits_chunk)
        return sums / jnp.maximum(counts, 1.0), counts

    return mean_pair_logprobs


def preference_accuracy(cfg: models.ModelConfig, params, batches, *, logits_chunk: int = 0, fn=None) -> dict:
    """Over an iterable of [P, 2, T] batches: accuracy, pair count and mean log-probs (empty pairs skipped)."""
    fn = fn or make_pair_logprobs(cfg, logits_chunk)
    scores = []
    for batch in batches:
        mean_logp, counts = jax.device_get(fn(params, batch))
        valid = np.all(np.asarray(counts) > 0, axis=1)
        scores.append(np.asarray(mean_logp, np.float64)[valid])
    scores = np.concatenate(scores) if scores else np.zeros([0, 2])
    n = len(scores)
    if n == 0:
        raise ValueError("preference_accuracy: no non-empty held-out pairs")
    chosen_sum, rejected_sum = float(scores[:, 0].sum()), float(scores[:, 1].sum())
    return {
        # The metric_fns of the preference tasks: one definition of held-out preference accuracy.
        "accuracy": data_metrics.preference_accuracy(None, scores)["preference_accuracy"],
        "pairs": n,
        "mean_logp_chosen": chosen_sum / n,
        "mean_logp_rejected": rejected_sum / n,
    }
