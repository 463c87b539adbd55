"""Metrics of the evaluation tasks (SeqIO ``metric_fns``), without TensorFlow: the trainer's held-out
evaluation (``oyster_jax.train.evaluate``) computes its accuracy with the same function."""

from __future__ import annotations

import numpy as np

__all__ = ["preference_accuracy"]


def preference_accuracy(targets, scores) -> dict:
    """Held-out preference accuracy, a SeqIO score metric: ``scores[i]`` is pair i's ``(chosen, rejected)``
    score (e.g. mean completion log-probs); a pair counts when the chosen score is strictly higher.
    ``targets`` (the chosen completions, or None) only check the number of pairs."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 2)
    if targets is not None and len(targets) != len(scores):
        raise ValueError(f"preference_accuracy: {len(targets)} targets but {len(scores)} score pairs")
    if len(scores) == 0:
        raise ValueError("preference_accuracy: no pairs")
    return {"preference_accuracy": float(np.mean(scores[:, 0] > scores[:, 1]))}
