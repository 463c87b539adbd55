"""The one answer to "which checkpoint format is this path?", and a model opened from any of them.

    cfg, params, tokenizer = convert.open_model(path)        # tokenizer: a `tokenizers.Tokenizer`
    cfg, params = convert.load_weights(path, mesh=mesh, rules=rules)

Formats (`checkpoint_format(path)`):
- ``hf``: a Hugging Face directory, `config.json` + `*.safetensors` (`convert.from_hf`);
- ``orbax``: our model checkpoint, `params/` + `model_config.json` (`convert.save_model`);
- ``trainer_stage``: one stage of a trainer workdir, `W/<stage>` (or its `checkpoints/`): the newest
  checkpoint that restores, with the stage's `model_config.json`;
- ``trainer_workdir``: a trainer workdir `W` (stage folders below it): its last stage that has a checkpoint,
  in the order of `W/config.json`'s `stages` (or the only stage folder).

The tokenizer (`find_tokenizer`): the one passed (a `tokenizer.json` or a folder holding one); else the
`tokenizer.json` in the model folder (HF layout), in its `tokenizer/` folder (what a trainer stage
`W/<stage>/tokenizer/` carries) or in the folder above it. Not found is a FileNotFoundError that lists where
it looked and says to pass one.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import tokenizers

from oyster_jax.convert import checkpoint as checkpoint_lib
from oyster_jax.convert.hf import from_hf

__all__ = [
    "FORMATS",
    "checkpoint_format",
    "resolve_model_dir",
    "find_tokenizer",
    "load_tokenizer",
    "load_weights",
    "open_model",
    "check_tokenizer",
]

FORMATS = ("hf", "orbax", "trainer_stage", "trainer_workdir")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_DIR = "tokenizer"  # <stage>/tokenizer/ in a trainer workdir


def _is_hf(path: pathlib.Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _is_orbax(path: pathlib.Path) -> bool:
    return (path / checkpoint_lib.CONFIG_FILE).is_file() and (path / checkpoint_lib.PARAMS_DIR).is_dir()


def _is_stage(path: pathlib.Path) -> bool:
    return (path / "checkpoints").is_dir() or (path.name == "checkpoints" and path.is_dir())


def _stage_dirs(workdir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in workdir.iterdir() if p.is_dir() and (p / "checkpoints").is_dir())


def checkpoint_format(path: str | os.PathLike) -> str:
    """One of FORMATS; a path that is none of them is a FileNotFoundError saying what was expected."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    if _is_hf(path):
        return "hf"
    if _is_orbax(path):
        return "orbax"
    if _is_stage(path):
        return "trainer_stage"
    if _stage_dirs(path):
        return "trainer_workdir"
    raise FileNotFoundError(
        f"{path}: not a model directory (expected a Hugging Face dir with config.json + *.safetensors, an Orbax "
        f"checkpoint with {checkpoint_lib.PARAMS_DIR}/ + {checkpoint_lib.CONFIG_FILE}, or a trainer workdir)"
    )


def _workdir_stage(workdir: pathlib.Path) -> pathlib.Path:
    """The stage folder of a trainer workdir whose model a user means: the last stage run that has a checkpoint."""
    stages = _stage_dirs(workdir)
    with_ckpt = [s for s in stages if checkpoint_lib.model_checkpoints(s)]
    order = None
    config_path = workdir / "config.json"
    if config_path.is_file():
        try:
            order = [s.strip() for s in str(json.loads(config_path.read_text())["stages"]).split(",") if s.strip()]
        except (json.JSONDecodeError, KeyError, TypeError):
            order = None  # not an experiment config: fall back to the folders themselves
    if order:
        ranked = [s for name in order for s in with_ckpt if s.name == name]
        if ranked:
            return ranked[-1]
    if len(with_ckpt) == 1:
        return with_ckpt[0]
    names = ", ".join(s.name for s in with_ckpt) or "none with a checkpoint"
    raise FileNotFoundError(f"{workdir}: trainer workdir with stages {names}; pass {workdir}/<stage>")


def resolve_model_dir(path: str | os.PathLike) -> tuple[str, pathlib.Path]:
    """(format, the folder to load): a trainer workdir resolves to its stage folder (format 'trainer_stage')."""
    path = pathlib.Path(path)
    fmt = checkpoint_format(path)
    if fmt == "trainer_workdir":
        return "trainer_stage", _workdir_stage(path)
    if fmt == "trainer_stage" and path.name == "checkpoints" and not (path / "checkpoints").is_dir():
        return fmt, path.parent
    return fmt, path


def find_tokenizer(model_path: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None):
    """The `tokenizer.json` to use with the model at `model_path` (see the module docstring)."""
    if tokenizer:
        p = pathlib.Path(tokenizer)
        candidate = p / TOKENIZER_FILE if p.is_dir() else p
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"{candidate}: tokenizer.json not found (the tokenizer passed)")
    if model_path is None:
        raise FileNotFoundError("tokenizer.json not found (no model path and no tokenizer given); pass tokenizer=PATH")
    try:
        checkpoint_format(model_path)
    except FileNotFoundError:  # not a model folder (the weights were given in memory): look in it anyway
        model_dir = pathlib.Path(model_path)
    else:
        model_dir = resolve_model_dir(model_path)[1]
    candidates = [model_dir / TOKENIZER_FILE, model_dir / TOKENIZER_DIR / TOKENIZER_FILE]
    candidates.append(model_dir.parent / TOKENIZER_FILE)
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"tokenizer.json not found for {model_path} (looked at {', '.join(map(str, candidates))}); "
        "pass the tokenizer (--tokenizer PATH / tokenizer=PATH)"
    )


def load_tokenizer(path: str | os.PathLike):
    """A `tokenizers.Tokenizer` from a tokenizer.json; a file that is not one is a ValueError naming it."""
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the Rust side raises its own exception type
        raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None


def load_weights(path: str | os.PathLike, *, mesh=None, rules=None, **config_overrides):
    """-> (ModelConfig, params) from any of FORMATS; `mesh` / `rules` place every array straight into its
    sharding, `config_overrides` set ModelConfig fields (dtypes, attention_impl, ...)."""
    fmt, model_dir = resolve_model_dir(path)
    if fmt == "hf":
        return from_hf(model_dir, mesh=mesh, rules=rules, **config_overrides)
    return checkpoint_lib.load_model(model_dir, mesh=mesh, rules=rules, **config_overrides)


def open_model(
    path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None, mesh=None, rules=None, **config_overrides
):
    """-> (ModelConfig, params, tokenizers.Tokenizer) from an HF dir, an Orbax checkpoint or a trainer workdir.

    The tokenizer is checked against the model: more token ids than the embedding has rows is a ValueError
    naming the tokenizer file. Without `mesh` the params land on the default device once here: host numpy
    arrays would be copied to the device again on every jitted call (measured: 7x slower decode steps)."""
    tok_path = find_tokenizer(path, tokenizer)
    tok = load_tokenizer(tok_path)
    cfg, params = load_weights(path, mesh=mesh, rules=rules, **config_overrides)
    if mesh is None:
        params = jax.device_put(params)
    check_tokenizer(tok, cfg, tok_path)
    return cfg, params, tok


def check_tokenizer(tok, cfg, tok_path) -> None:
    """A tokenizer with more ids than the model's vocabulary is refused (its ids would index past the embedding)."""
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"{tok_path}: tokenizer has {tok.get_vocab_size()} ids, the model only {cfg.vocab_size}")
