"""Finite state only: a step whose updated parameters or optimizer state hold NaN/Inf is never saved.

Inside the jitted step, `finite_flags(new_state)` adds one scalar, `state_finite` (1.0 when every float
leaf of the new parameters and optimizer moments is finite), computed in the same pass over the state
as `param_norm`. On the host, `nonfinite_reason(metrics)` turns the step's metrics into the reason to
stop (or None); the trainer then stops before the checkpoint of that step.

The loss of step n is computed with the parameters *before* its update, so a loss check alone lets
step n's non-finite update be saved as "good" and only notices at step n+1: the state flag closes that gap.

On resume, `nonfinite_leaves(state)` names the arrays of a restored checkpoint that hold non-finite
values; `Checkpointer.restore_latest` then skips that checkpoint as it skips a corrupt one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Scalars of a step's metrics that must be finite for its state to be kept.
CHECKED_METRICS = ("loss", "grad_norm", "param_norm")
STATE_FLAG = "state_finite"


def _float_leaves(tree) -> list:
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


def all_finite(tree) -> jax.Array:
    """A scalar bool: every float leaf of `tree` is free of NaN/Inf (traceable)."""
    leaves = _float_leaves(tree)
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def finite_flags(new_state: dict) -> dict:
    """{STATE_FLAG: 1.0 | 0.0} for the step's updated params and optimizer state (call inside the step)."""
    checked = {"params": new_state["params"], "opt_state": new_state["opt_state"]}
    return {STATE_FLAG: all_finite(checked).astype(jnp.float32)}


def nonfinite_reason(metrics: dict) -> str | None:
    """Why this step's state must not be kept, or None. Removes STATE_FLAG from `metrics` (not a curve)."""
    flag = metrics.pop(STATE_FLAG, 1.0)
    bad = [f"{k}={metrics[k]}" for k in CHECKED_METRICS if k in metrics and not math.isfinite(metrics[k])]
    if flag != 1.0:
        bad.append("the updated parameters or optimizer state hold NaN/Inf")
    return ", ".join(bad) if bad else None


def stop_message(stage: str, step: int, reason: str, last_checkpoint: int | None, directory) -> str:
    """The error of a non-finite step: names the step and the newest checkpoint (all saved ones are finite)."""
    if last_checkpoint is None:
        resume = "no checkpoint of this stage was saved yet; a rerun starts the stage from step 0"
    else:
        resume = f"last finite checkpoint: step {last_checkpoint} in {directory}; a rerun resumes from it"
    return (
        f"{stage}: non-finite values at step {step} ({reason}); stopped without saving this step ({resume}). "
        f"Lower config.{stage}.learning_rate (or set config.{stage}.grad_clip) or check the data, then rerun."
    )


_leaf_flags = jax.jit(lambda leaves: [jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_leaves(state: dict) -> list[str]:
    """Paths of the float arrays of `state` that hold NaN/Inf (one small device reduction per array)."""
    flat = [
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    if not flat:
        return []
    flags = jax.device_get(_leaf_flags([leaf for _, leaf in flat]))
    return [name for (name, _), ok in zip(flat, flags) if not bool(ok)]
