"""LoRA adapters <-> PEFT's format (adapter_config.json + adapter_model.safetensors), and LoRA trainer stages.

    to_peft(cfg, params, out_dir, base_model_name_or_path="Qwen/Qwen3-8B")   # cfg.lora set; adapters of params
    cfg, params = from_peft(base_dir, adapter_dir)     # base + a PEFT-made adapter: cfg.lora set, params merged
    cfg, adapters, meta = load_lora_stage(stage_dir)   # a trainer stage run with config.lora.rank > 0

PEFT names a layer's tensors `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [r, in]
and `....lora_B.weight` [out, r] (torch Linear layout); ours are A [*in_dims, r], B [r, *out_dims]
(models.lora), so conversion is a reshape and a transpose. `peft.PeftModel.from_pretrained(hf_model, out_dir)`
and vLLM's LoRA loader read what `to_peft` writes.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re

import jax
import numpy as np
import orbax.checkpoint as ocp

from oyster_jax import models
from oyster_jax.convert import checkpoint as checkpoint_lib
from oyster_jax.convert.formats import load_weights, resolve_model_dir
from oyster_jax.convert.safetensors_io import CheckpointFormatError, SafetensorsFile, write_file
from oyster_jax.core.files import atomic_directory
from oyster_jax.models import lora as lora_lib
from oyster_jax.models.config import ModelConfig
from oyster_jax.models.lora import SUFFIX_A, SUFFIX_B, TARGETS, LoraConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_FILE = "lora.json"  # beside a LoRA trainer stage's checkpoints (train.trainer)
_BY_PROJ = {proj: (target, module) for target, (module, proj, _) in TARGETS.items()}
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_(A|B)(?:\.default)?\.weight$"
)


class NotALoraCheckpointError(CheckpointFormatError):
    """A checkpoint without adapters where adapters were asked for."""


def peft_name(layer: int, module: str, proj: str, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{module}.{proj}.lora_{which}.weight"


def _layer(tree, cfg: ModelConfig, i: int, module: str, name: str):
    if cfg.scan_layers:
        return np.asarray(tree["layers"][module][name][i])
    return np.asarray(tree[f"layers_{i}"][module][name])


def peft_tensors(cfg: ModelConfig, params: dict, dtype: str = "float32") -> dict[str, np.ndarray]:
    """PEFT-named tensors [r, in] / [out, r] of the adapters in `params` (base + adapters, or adapters)."""
    if cfg.lora is None:
        raise NotALoraCheckpointError("the model has no LoRA adapters (cfg.lora is None)")
    adapters = lora_lib.split(params)[1]
    r, out = cfg.lora.rank, {}
    for i in range(cfg.num_layers):
        for target in cfg.lora.targets:
            module, proj, _ = TARGETS[target]
            a = _layer(adapters, cfg, i, module, proj + SUFFIX_A)  # [*in_dims, r]
            b = _layer(adapters, cfg, i, module, proj + SUFFIX_B)  # [r, *out_dims]
            out[peft_name(i, module, proj, "A")] = np.ascontiguousarray(a.reshape(-1, r).T.astype(dtype))
            out[peft_name(i, module, proj, "B")] = np.ascontiguousarray(b.reshape(r, -1).T.astype(dtype))
    return out


def adapter_config(cfg: ModelConfig, base_model_name_or_path: str = "") -> dict:
    """PEFT's adapter_config.json for the adapters of `cfg` (plain LoRA: no DoRA, no rsLoRA, no bias)."""
    lora = cfg.lora
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or None,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": [TARGETS[t][1] for t in lora.targets],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def to_peft(
    cfg: ModelConfig, params: dict, out_dir: str | os.PathLike, *, base_model_name_or_path: str = "", dtype="float32"
) -> pathlib.Path:
    """Write the adapters of `params` as a PEFT adapter directory (replaced only once complete)."""
    tensors = peft_tensors(cfg, params, dtype)
    out_dir = pathlib.Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as tmp:
        write_file(tmp / ADAPTER_WEIGHTS, iter(tensors.items()), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(cfg, base_model_name_or_path), indent=2))
    return out_dir


# ------------------------------------------------------------------------------------------------
# PEFT -> ours
# ------------------------------------------------------------------------------------------------


def _read_adapter_config(adapter_dir: pathlib.Path) -> dict:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (a PEFT adapter directory holds {ADAPTER_CONFIG})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{path}: unreadable ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object")
    unsupported = {
        "peft_type": d.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(d.get("use_dora")),
        "bias": d.get("bias", "none") != "none",
        "fan_in_fan_out": bool(d.get("fan_in_fan_out")),
        "modules_to_save": bool(d.get("modules_to_save")),
        "rank_pattern": bool(d.get("rank_pattern")),
        "alpha_pattern": bool(d.get("alpha_pattern")),
        "layers_to_transform": d.get("layers_to_transform") is not None,
    }
    for field, bad in unsupported.items():
        if bad:
            raise CheckpointFormatError(f"{path}: {field}={d.get(field)!r} is not supported (plain LoRA only)")
    return d


def read_peft(cfg: ModelConfig, adapter_dir: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """-> (cfg with its LoraConfig, adapters tree shaped for it) from a PEFT adapter dir for base model `cfg`."""
    adapter_dir = pathlib.Path(adapter_dir)
    meta = _read_adapter_config(adapter_dir)
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    f = SafetensorsFile(path)
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key in f.keys():
        m = _PEFT_KEY.match(key)
        if m is None or m.group(3) not in _BY_PROJ:
            raise CheckpointFormatError(f"{path}: tensor {key!r} is not a LoRA A/B of a decoder projection")
        layer, module, proj, which = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if _BY_PROJ[proj][1] != module or layer >= cfg.num_layers:
            raise CheckpointFormatError(f"{path}: tensor {key!r} does not exist in a {cfg.num_layers}-layer {cfg.arch}")
        found.setdefault((layer, proj), {})[which] = f.get(key)
    projs = sorted({p for _, p in found}, key=lambda p: list(_BY_PROJ).index(p))
    if not projs:
        raise CheckpointFormatError(f"{path}: no LoRA tensors")
    r = int(meta.get("r", 8))
    for i in range(cfg.num_layers):
        for proj in projs:
            got = found.get((i, proj), {})
            if set(got) != {"A", "B"}:
                raise CheckpointFormatError(
                    f"{path}: {peft_name(i, _BY_PROJ[proj][1], proj, 'A' if 'A' not in got else 'B')} missing"
                )
    alpha = float(meta.get("lora_alpha", 8))
    if meta.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r): the same as alpha * sqrt(r) over r
        alpha = alpha * math.sqrt(r)
    lora = LoraConfig(rank=r, alpha=alpha, dropout=float(meta.get("lora_dropout", 0.0) or 0.0),
                      targets=tuple(_BY_PROJ[p][0] for p in projs))  # fmt: skip
    cfg = cfg.replace(lora=lora)
    abstract = lora_lib.split(_abstract(cfg))[1]
    per_layer: dict = {}
    for i in range(cfg.num_layers):
        for proj in projs:
            target, module = _BY_PROJ[proj]
            a_shape = _shape(abstract, cfg, module, proj + SUFFIX_A)
            b_shape = _shape(abstract, cfg, module, proj + SUFFIX_B)
            a, b = found[(i, proj)]["A"], found[(i, proj)]["B"]
            want_a, want_b = (r, math.prod(a_shape[:-1])), (math.prod(b_shape[1:]), r)
            for name, arr, want in (("A", a, want_a), ("B", b, want_b)):
                if tuple(arr.shape) != want:
                    raise CheckpointFormatError(
                        f"{path}: {peft_name(i, module, proj, name)} has shape {list(arr.shape)}, expected {list(want)}"
                    )
            per_layer.setdefault(module, {}).setdefault(proj + SUFFIX_A, []).append(
                a.astype(np.float32).T.reshape(a_shape)
            )
            per_layer[module].setdefault(proj + SUFFIX_B, []).append(b.astype(np.float32).T.reshape(b_shape))
    if cfg.scan_layers:
        adapters = {"layers": {m: {k: np.stack(v) for k, v in d.items()} for m, d in per_layer.items()}}
    else:
        adapters = {
            f"layers_{i}": {m: {k: v[i] for k, v in d.items()} for m, d in per_layer.items()}
            for i in range(cfg.num_layers)
        }
    return cfg, adapters


def _abstract(cfg):
    return models.abstract_params(cfg)


def _shape(abstract, cfg, module, name) -> tuple[int, ...]:
    node = abstract["layers"] if cfg.scan_layers else abstract["layers_0"]
    shape = tuple(node[module][name].shape)
    return shape[1:] if cfg.scan_layers else shape


def from_peft(base_dir, adapter_dir, *, mesh=None, rules=None, **config_overrides) -> tuple[ModelConfig, dict]:
    """A base model (any format `convert.load_weights` reads) and a PEFT LoRA adapter on it -> (cfg with
    cfg.lora, base + adapters); `forward(cfg, params, ...)` runs the adapted model, `lora.merged_weights` folds
    the adapters in."""
    base_cfg, base = load_weights(base_dir, mesh=mesh, rules=rules, **config_overrides)
    cfg, adapters = read_peft(base_cfg, adapter_dir)
    if mesh is not None:
        adapters = jax.device_put(adapters, lora_lib.split(models.param_shardings(cfg, mesh, rules))[1])
    return cfg, lora_lib.merge(base, adapters)


# ------------------------------------------------------------------------------------------------
# LoRA trainer stages
# ------------------------------------------------------------------------------------------------


def lora_stage_dir(path: str | os.PathLike) -> pathlib.Path | None:
    """The trainer stage folder at `path` (a stage, its checkpoints/ or a workdir) when it was trained with
    LoRA (it holds lora.json), else None."""
    try:
        fmt, folder = resolve_model_dir(path)
    except FileNotFoundError:
        return None
    return folder if fmt == "trainer_stage" and (folder / LORA_FILE).is_file() else None


def load_lora_stage(path: str | os.PathLike) -> tuple[ModelConfig, dict, dict]:
    """-> (cfg with cfg.lora, adapters of the newest checkpoint that restores, lora.json) of a LoRA stage."""
    stage = lora_stage_dir(path)
    if stage is None:
        raise NotALoraCheckpointError(f"{path}: not a LoRA trainer stage (no {LORA_FILE} beside its checkpoints)")
    try:
        meta = json.loads((stage / LORA_FILE).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{stage / LORA_FILE}: unreadable ({e})") from None
    broken = []
    for params_dir, cfg_path in checkpoint_lib.model_checkpoints(stage):
        cfg = checkpoint_lib._read_config(cfg_path, {})
        if cfg.lora is None:
            raise CheckpointFormatError(f"{cfg_path}: no 'lora' field, but {stage / LORA_FILE} exists")
        abstract = lora_lib.split(_abstract(cfg))[1]
        problems = checkpoint_lib.saved_shape_problems(params_dir, abstract)
        if problems:
            broken.append(f"{params_dir} ({'; '.join(problems)})")
            continue
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a, d=one: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=d), abstract)
        try:
            return cfg, ocp.StandardCheckpointer().restore(params_dir, target), meta
        except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
            broken.append(f"{params_dir} ({type(e).__name__})")
    raise CheckpointFormatError(f"{stage}: no adapter checkpoint restores: " + ("; ".join(broken) or "none saved"))


def load_stage_base(cfg: ModelConfig, meta: dict):
    """The frozen base of a LoRA stage (lora.json's base_model, or the seed's random init), checked against
    the recorded fingerprint."""
    base_cfg = lora_lib.without_adapters(cfg)
    source = meta.get("base_path") or ""
    if source:
        overrides = {k: getattr(cfg, k) for k in ("param_dtype", "dtype")}
        _, base = load_weights(source, **overrides)
    else:
        base = models.init_params(base_cfg, jax.random.key(int(meta.get("seed", 0))))
    fp = lora_lib.fingerprint(base)
    if meta.get("base_fingerprint") and fp != meta["base_fingerprint"]:
        raise CheckpointFormatError(
            f"the base model {meta.get('base_model')!r} now has fingerprint {fp}, but the adapters were trained "
            f"on fingerprint {meta['base_fingerprint']}: it is not the same base"
        )
    return base
