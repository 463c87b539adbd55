"""Orbax model checkpoints: a directory holding `params/` (Orbax) and `model_config.json`.

    save_model(ckpt_dir, cfg, params)
    cfg, params = load_model(ckpt_dir, mesh=None)      # restores straight into the target sharding

`load_model` also accepts a trainer workdir or its `checkpoints/` directory (see oyster_jax.train): it
then takes the newest step that holds params.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp

from oyster_jax.models.config import ModelConfig

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def save_model(ckpt_dir: str | os.PathLike, cfg: ModelConfig, params) -> pathlib.Path:
    """Write params + config; an existing checkpoint at `ckpt_dir` is replaced only after success."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    tmp = ckpt_dir.with_name(f".{ckpt_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    (tmp / CONFIG_FILE).write_text(cfg.to_json())
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    tmp.rename(ckpt_dir)
    return ckpt_dir


def find_model_checkpoint(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """(params dir, model_config.json) for a model checkpoint, a trainer workdir or its checkpoints dir."""
    path = pathlib.Path(path).absolute()
    if (path / CONFIG_FILE).exists() and (path / PARAMS_DIR).is_dir():
        return path / PARAMS_DIR, path / CONFIG_FILE
    for root in (path, path / "checkpoints"):
        steps = sorted((int(p.name), p) for p in root.glob("*") if p.name.isdigit() and (p / PARAMS_DIR).is_dir())
        for _, step_dir in reversed(steps):
            for cfg_path in (step_dir / CONFIG_FILE, root / CONFIG_FILE, root.parent / CONFIG_FILE):
                if cfg_path.exists():
                    return step_dir / PARAMS_DIR, cfg_path
    raise FileNotFoundError(
        f"{path}: no model checkpoint found (expected {PARAMS_DIR}/ + {CONFIG_FILE}, or a trainer workdir)"
    )


def load_model(ckpt_dir: str | os.PathLike, *, mesh=None, rules=None, **config_overrides):
    """-> (ModelConfig, params). With `mesh`, every array is restored directly into its sharding."""
    params_dir, cfg_path = find_model_checkpoint(ckpt_dir)
    saved = json.loads(cfg_path.read_text())
    saved = saved.get("model", saved) if isinstance(saved.get("model"), dict) else saved
    cfg = ModelConfig.from_dict(saved)
    cfg = cfg.replace(**config_overrides) if config_overrides else cfg
    from oyster_jax import models

    abstract = models.abstract_params(cfg)
    if mesh is not None:
        from oyster_jax.models import param_shardings

        shardings = param_shardings(cfg, mesh, rules)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    params = ocp.StandardCheckpointer().restore(params_dir, target)
    return cfg, params
