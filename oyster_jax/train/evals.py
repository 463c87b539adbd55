"""Held-out evaluations that `train()` runs inside a stage (`config.evals`).

    config.evals = ("heldout_pref_accuracy",)   # names from EVALS
    config.eval_every_steps = 0                 # 0: at the end of each stage only; N: also every N steps
    config.eval_batch_size = 32                 # pairs per evaluation batch
    config.eval_max_batches = 0                 # 0: every held-out example

Results: `StageResult.evals` ({name: {metric: value}} at the stage's end), `DONE.json["evals"]`, and one
line per evaluation in `W/<stage>/evals.jsonl` ({"step", "eval", metric: value, ...}). A stage that is
already done reports the results saved in its DONE.json (and runs only evaluations added since).

An evaluation is a function (spec, params, cache) -> {metric: float}; `cache` is a dict that lives for
one `train()` call (jitted functions kept across stages).
"""

from __future__ import annotations

import itertools
import logging

from oyster_jax.models.config import ConfigError
from oyster_jax.train import batches as batches_lib
from oyster_jax.train import evaluate
from oyster_jax.train.stage import StageSpec

log = logging.getLogger(__name__)


def heldout_pref_accuracy(spec: StageSpec, params, cache: dict) -> dict:
    """Share of held-out preference pairs (config.data.heldout_pref_task / heldout_split) whose chosen
    completion has the higher mean completion log-prob (`train.evaluate.preference_accuracy`)."""
    key = ("pair_logprobs", spec.model, spec.hparams.logits_chunk)
    if key not in cache:
        cache[key] = evaluate.make_pair_logprobs(spec.model, spec.hparams.logits_chunk)
    pairs = batches_lib.make_heldout_iterator(spec, spec.evals.batch_size)
    if spec.evals.max_batches:
        pairs = itertools.islice(pairs, spec.evals.max_batches)
    return evaluate.preference_accuracy(spec.model, params, pairs, fn=cache[key])


EVALS = {"heldout_pref_accuracy": heldout_pref_accuracy}


def check_names(names) -> None:
    unknown = [n for n in names if n not in EVALS]
    if unknown:
        raise ConfigError(f"config.evals: unknown evaluation(s) {unknown}; known: {sorted(EVALS)}")


def run(spec: StageSpec, params, cache: dict, names=None) -> dict[str, dict]:
    """{name: metrics} of the evaluations `names` (default: all of spec.evals) on `params`."""
    out = {}
    for name in spec.evals.names if names is None else names:
        out[name] = EVALS[name](spec, params, cache)
        summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in out[name].items())
        log.info("%s: %s: %s", spec.stage_name, name, summary)
    return out
