"""Percentile bootstrap intervals for the benchmark scores (ASR, Constructive), reproducible by seed.

    ci = interval([[0, 1, 1, 0]], lambda groups: 100 * groups[0].mean())   # {"low", "high", "n", ...}

Items are resampled with replacement within each group (a stratified bootstrap: each group keeps its size),
the statistic is computed on every resample, and the interval is the (2.5, 97.5) percentile range of those
values. Grouping matters where a score averages groups of fixed size: Strata-Sword's Avg is the mean of the
per-level ASRs, so each level is resampled on its own. The seed is fixed (default 0) and written next to the
interval with the number of resamples and of items, so the same records always give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["RESAMPLES", "SEED", "LEVEL", "interval", "resampled"]

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


def resampled(
    groups: Sequence[np.ndarray], statistic: Callable[[list[np.ndarray]], np.ndarray], resamples: int, seed: int
) -> np.ndarray:
    """`statistic` over `resamples` stratified resamples. `statistic` receives one array per group, each of
    shape [resamples, n_group, ...] and returns [resamples, ...] (vectorised over the resamples)."""
    rng = np.random.default_rng(seed)
    drawn = []
    for g in groups:
        g = np.asarray(g, dtype=np.float64)
        index = rng.integers(0, len(g), size=(resamples, len(g)))
        drawn.append(g[index])
    return np.asarray(statistic(drawn), dtype=np.float64)


def interval(
    groups: Sequence[Sequence[float]] | Sequence[np.ndarray],
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict | None:
    """``{"low", "high", "level", "n", "resamples", "seed"}`` for a scalar statistic, or None when a group is
    empty (nothing to resample). With more than one output (e.g. one per β) low and high are lists."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    if not groups or any(len(g) == 0 for g in groups):
        return None
    values = resampled(groups, statistic, resamples, seed)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail], axis=0)
    as_py = (lambda a: [float(x) for x in a]) if np.ndim(low) else float
    return {
        "low": as_py(low),
        "high": as_py(high),
        "level": level,
        "n": int(sum(len(g) for g in groups)),
        "resamples": resamples,
        "seed": seed,
    }
