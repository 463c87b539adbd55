"""Training checkpoints: Orbax `CheckpointManager`, async, every K steps, keep N.

Layout of one stage's directory (`W/sft`, `W/pref`):

    checkpoints/<step>/params/        model parameters (what `convert.load_model` reads)
    checkpoints/<step>/train_state/   optimizer state, step, RNG key data
    checkpoints/<step>/data/          data-iterator state (JSON) for an exact resume
    checkpoints/<step>/config/        the experiment config (JSON) the step was trained with
    model_config.json                 the ModelConfig (beside `checkpoints/`, as `load_model` expects)

Restoring walks back from the newest step: a step that fails to restore (truncated file, missing item,
partial write) or holds NaN/Inf (`guard.nonfinite_leaves`) is skipped, and once an older step restores
cleanly the skipped ones are moved to `checkpoints.corrupt/` with a warning. When no step is usable,
nothing is moved and `NoUsableCheckpointError` says why for each step (the trainer refuses to restart).
Restores go straight into abstract arrays that carry the *current* mesh's shardings, so a checkpoint
written on 8 devices restores onto 1 and vice versa.
"""

from __future__ import annotations

import logging
import time

import jax
import orbax.checkpoint as ocp
from etils import epath

from oyster_jax.convert.checkpoint import saved_shape_problems
from oyster_jax.train import guard
from oyster_jax.train import workdir as workdir_lib

log = logging.getLogger(__name__)

ITEMS = ("params", "train_state", "data", "config")


class NoUsableCheckpointError(RuntimeError):
    """Checkpoints exist but none restores to finite values; `failures` is [(step, reason)], newest first."""

    def __init__(self, directory, failures: list[tuple[int, str]]):
        self.directory, self.failures = directory, failures
        detail = "; ".join(f"step {step}: {why}" for step, why in failures)
        super().__init__(f"{directory}: no checkpoint is usable ({detail})")


class NonFiniteCheckpointError(ValueError):
    """A checkpoint that restored but holds NaN/Inf (saved before the finite-state check existed)."""


class Checkpointer:
    def __init__(self, directory, *, keep: int, async_save: bool = True):
        self.directory = workdir_lib.resolve(directory)  # local or gs://
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,  # a save interrupted by SIGKILL leaves a tmp dir: drop it
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    # ----------------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        self._manager.reload()  # another process (or a quarantine) may have changed the directory
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: dict, data_state, config: dict) -> None:
        """Start an (async) save of `state` at `step`; an existing checkpoint of that step is kept."""
        if step in self._manager.all_steps():  # e.g. the final step right after an every-K save
            return
        train_state = {k: v for k, v in state.items() if k != "params"}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state["params"]),
                train_state=ocp.args.StandardSave(train_state),
                data=ocp.args.JsonSave(data_state if data_state is not None else {}),
                config=ocp.args.JsonSave(config),
            ),
            force=True,
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    # ----------------------------------------------------------------------------------------------
    def _check_param_shapes(self, step: int, abstract_params) -> None:
        """Saved parameter shapes (metadata only) against the model's, before any array is read."""
        problems = saved_shape_problems(self.directory / str(step) / "params", abstract_params)
        if problems:
            raise ValueError(f"parameters of another model: {'; '.join(problems)}")

    def _restore_step(self, step: int, abstract_state: dict):
        self._check_param_shapes(step, abstract_state["params"])
        abstract_train = {k: v for k, v in abstract_state.items() if k != "params"}
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_state["params"]),
                train_state=ocp.args.StandardRestore(abstract_train),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        state = dict(out["train_state"], params=out["params"])
        saved_step = int(jax.device_get(state["step"]))
        if saved_step != step:
            raise ValueError(f"train_state.step={saved_step} disagrees with the directory name {step}")
        return state, out["data"], out["config"]

    def restore_latest(self, abstract_state: dict):
        """-> (step, state, data_state, config) of the newest usable checkpoint, or None when there is none.

        `abstract_state` is the state's pytree of jax.ShapeDtypeStruct with the target shardings. Raises
        NoUsableCheckpointError (and moves nothing) when checkpoints exist but none is usable.
        """
        failures: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                state, data_state, config = self._restore_step(step, abstract_state)
                bad = guard.nonfinite_leaves(state)
                if bad:
                    raise NonFiniteCheckpointError(
                        f"non-finite values (NaN/Inf) in {len(bad)} arrays, e.g. {', '.join(bad[:3])}"
                    )
            except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
                why = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}" if str(e) else type(e).__name__
                failures.append((step, why))
                continue
            for bad_step, why in failures:  # only now: a usable step exists, so moving these loses nothing
                moved = self._quarantine(bad_step)
                log.warning(
                    "checkpoint step %d in %s could not be restored (%s); moved it to %s and resumed from step %d",
                    bad_step,
                    self.directory,
                    why,
                    moved,
                    step,
                )
            return step, state, data_state, config
        if failures:
            raise NoUsableCheckpointError(self.directory, failures)
        return None

    def _quarantine(self, step: int) -> epath.Path:
        """Move a broken step aside (never delete it: it may still hold something a person wants)."""
        src = self.directory / str(step)
        dst_root = self.directory.parent / (self.directory.name + ".corrupt")
        dst_root.mkdir(parents=True, exist_ok=True)
        dst = dst_root / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if src.exists():
            src.rename(dst)
        self._manager.reload()
        return dst

    def restore_config(self, step: int) -> dict:
        """The experiment config saved with `step` (no arrays read)."""
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
