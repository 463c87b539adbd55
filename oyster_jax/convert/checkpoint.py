"""Orbax model checkpoints: a directory holding `params/` (Orbax) and `model_config.json`.

    save_model(ckpt_dir, cfg, params)
    cfg, params = load_model(ckpt_dir, mesh=None)      # restores straight into the target sharding

`load_model` also accepts a trainer stage directory or its `checkpoints/` directory (see oyster_jax.train):
it then takes the newest step that restores. `convert.open_model` takes any model path (formats.py).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import jax
import orbax.checkpoint as ocp
from etils import epath

from oyster_jax.convert.safetensors_io import CheckpointFormatError
from oyster_jax.core.files import atomic_directory, atomic_write_text
from oyster_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def save_model(ckpt_dir: str | os.PathLike, cfg: ModelConfig, params) -> pathlib.Path:
    """Write params + config; an existing checkpoint at `ckpt_dir` is replaced only after success."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    with atomic_directory(ckpt_dir) as tmp:  # at every moment one complete checkpoint sits under a known name
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / PARAMS_DIR, params)
        checkpointer.wait_until_finished()
        atomic_write_text(tmp / CONFIG_FILE, cfg.to_json())
    return ckpt_dir


def model_checkpoints(path: str | os.PathLike) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """(params dir, model_config.json) of every checkpoint at `path`, newest first: one for a model checkpoint,
    one per finished step for a trainer stage dir or its `checkpoints/` dir (a save still in progress has a
    temporary, non-numeric name and is not listed)."""
    path = pathlib.Path(path).absolute()
    if (path / CONFIG_FILE).exists() and (path / PARAMS_DIR).is_dir():
        return [(path / PARAMS_DIR, path / CONFIG_FILE)]
    found = []
    for root in (path, path / "checkpoints"):
        steps = sorted((int(p.name), p) for p in root.glob("*") if p.name.isdigit() and (p / PARAMS_DIR).is_dir())
        for _, step_dir in reversed(steps):
            cfg_path = next(
                (c for c in (step_dir / CONFIG_FILE, root / CONFIG_FILE, root.parent / CONFIG_FILE) if c.exists()), None
            )
            if cfg_path is not None:
                found.append((step_dir / PARAMS_DIR, cfg_path))
    return found


def saved_shape_problems(params_dir, abstract_params) -> list[str]:
    """How the arrays saved in an Orbax `params_dir` differ from `abstract_params` (metadata only, no array
    read): missing, unexpected and mis-shaped tensors by path. Checked before a restore, so a wrong model
    is named here instead of failing half-way through a restore (whose pending TensorStore callbacks then
    print "Event loop is closed" tracebacks)."""
    saved = ocp.StandardCheckpointHandler().metadata(epath.Path(str(params_dir)))
    keystr = jax.tree_util.keystr
    want = {keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    have = {keystr(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    reshaped = [f"{k} {list(have[k])} vs {list(want[k])}" for k in want if k in have and have[k] != want[k]]
    return (
        ([f"missing {', '.join(missing[:3])}"] if missing else [])
        + ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        + ([f"shape (saved vs model) {', '.join(reshaped[:3])}"] if reshaped else [])
    )


def find_model_checkpoint(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """(params dir, model_config.json) of the newest checkpoint at `path` (see `model_checkpoints`)."""
    found = model_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"{pathlib.Path(path).absolute()}: no model checkpoint found (expected {PARAMS_DIR}/ + {CONFIG_FILE}, "
            "or a trainer workdir)"
        )
    return found[0]


def _read_config(cfg_path: pathlib.Path, config_overrides: dict) -> ModelConfig:
    try:
        saved = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{cfg_path}: unreadable ({e})") from e
    if not isinstance(saved, dict):
        raise CheckpointFormatError(f"{cfg_path}: expected a JSON object")
    saved = saved.get("model", saved) if isinstance(saved.get("model"), dict) else saved
    cfg = ModelConfig.from_dict(saved)
    return cfg.replace(**config_overrides) if config_overrides else cfg


def load_model(ckpt_dir: str | os.PathLike, *, mesh=None, rules=None, **config_overrides):
    """-> (ModelConfig, params) of the newest checkpoint that restores (a broken newer step is skipped with a
    warning and left where it is). With `mesh`, every array is restored directly into its sharding."""
    find_model_checkpoint(ckpt_dir)  # nothing there: say so
    broken = []
    for params_dir, cfg_path in model_checkpoints(ckpt_dir):
        cfg = _read_config(cfg_path, config_overrides)
        try:
            params = _restore(params_dir, cfg, mesh, rules)
        except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log.warning("%s could not be restored (%s); trying the previous checkpoint", params_dir, reason)
            broken.append(f"{params_dir} ({reason})")
            continue
        return cfg, params
    raise CheckpointFormatError(f"{ckpt_dir}: no checkpoint restores: " + "; ".join(broken))


def _restore(params_dir: pathlib.Path, cfg: ModelConfig, mesh, rules):
    from oyster_jax import models

    abstract = models.abstract_params(cfg)
    if mesh is not None:
        from oyster_jax.models import param_shardings

        shardings = param_shardings(cfg, mesh, rules)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    problems = saved_shape_problems(params_dir, abstract)
    if problems:
        raise CheckpointFormatError(f"{params_dir}: the saved tensors do not match this model: {'; '.join(problems)}")
    return ocp.StandardCheckpointer().restore(params_dir, target)
