"""Experiment configs (`configs/experiments/*.py`, bundled as `oyster_jax.configs.experiments`): loading by
name or path, `--config.key=value` overrides, validation.

An experiment config is an `ml_collections.ConfigDict` with these fields (defaults in `base_config()`):

    model            ModelConfig fields (architecture from configs/models/<name>.py, plus dtype,
                     param_dtype, remat_policy, scan_layers, attention_impl, math_impl)
    init_from        "" (random init) | a Hugging Face model dir | an Orbax model checkpoint (convert.save_model)
    stages           "sft" | "pref" | "sft,pref" (chained: pref starts from sft's final parameters)
    seed, mesh, sharding
    data             sft_task, pref_task (data specs: task/mixture names, paths, hf:PATH[:split]),
                     sft_mixture, pref_mixture ({spec: rate} as JSON; when set they replace the *_task),
                     heldout_pref_task/split, seq_len, pref_seq_len, max_prompt_len, tokenizer, chat_format,
                     chain_style
    sft, pref        per stage: num_steps, batch_size (rows for SFT, *pairs* for pref), microbatches,
                     learning_rate, warmup_steps, min_lr_ratio, weight_decay, b1, b2, eps, grad_clip,
                     logits_chunk; pref also loss (orpo|dpo|ipo|simpo), orpo_lambda, beta, simpo_gamma,
                     label_smoothing, reference (frozen|precomputed, DPO/IPO only)
    checkpoint       every_steps, keep, async_save
    lora             rank (0: off, full fine-tuning), alpha, dropout, targets (of q,k,v,o,gate,up,down), base_dtype
                     ("" = model.param_dtype; "bfloat16" stores the frozen base in bf16): see docs/training.md
    log_every, peak_tflops (per device; 0: the chip's bf16 peak from train/metrics.py, measured on CPU),
    fresh, throttle_seconds, synthetic_data
    evals, eval_every_steps, eval_batch_size, eval_max_batches   held-out evaluations inside train()

`train.stage.describe(config, stage_name)` reads a stage's part of it once into a frozen StageSpec.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math

import ml_collections

from oyster_jax.configs.sharding import RECIPES
from oyster_jax.core import chat
from oyster_jax.models import ModelConfig
from oyster_jax.models.config import DTYPES, ConfigError, load_config
from oyster_jax.models.lora import TARGETS, LoraConfig, LoraConfigError
from oyster_jax.sharding import parse_mesh_spec
from oyster_jax.train.losses import PREFERENCE_LOSSES

STAGES = ("sft", "pref")
REFERENCES = ("frozen", "precomputed")  # DPO/IPO reference log-probs: a frozen copy of the start | precomputed
# ModelConfig fields that define the network (a checkpoint of another value is another model).
ARCH_FIELDS = (
    "arch",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "tie_word_embeddings",
    "qkv_bias",
    "o_bias",
    "qk_norm",
)


def stage_defaults(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_steps = 100
    c.batch_size = 8  # SFT: packed rows per step; pref: pairs per step (2x rows)
    c.microbatches = 1  # gradient accumulation: the batch runs as this many slices through lax.scan
    c.learning_rate = 1e-4
    c.warmup_steps = 10
    c.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
    c.weight_decay = 0.0
    c.b1 = 0.9
    c.b2 = 0.95
    c.eps = 1e-8
    c.grad_clip = 1.0
    c.logits_chunk = 0  # sequence positions per slab of LM head + CE (0: all at once); >0 for big vocabularies
    c.update(overrides)
    return c


def pref_defaults(**overrides) -> ml_collections.ConfigDict:
    c = stage_defaults(learning_rate=5e-5)
    c.loss = "orpo"
    c.orpo_lambda = 0.1  # ORPO λ (weight of the odds-ratio term)
    c.nll_on_prompt = False  # ORPO NLL over chosen prompt + completion (TRL's ORPOTrainer) instead of completion
    c.beta = 0.1  # DPO / IPO / SimPO β
    c.simpo_gamma = 0.5  # SimPO target margin γ
    c.label_smoothing = 0.0  # conservative DPO ε
    c.reference = "frozen"  # DPO/IPO reference: "frozen" copy of the start params | "precomputed" log-probs
    c.update(overrides)
    return c


def lora_defaults(**overrides) -> ml_collections.ConfigDict:
    """LoRA (models.lora): rank 0 is off. With rank > 0 only the adapters train and are checkpointed."""
    c = ml_collections.ConfigDict()
    c.rank = 0
    c.alpha = 16.0  # the adapter's output is scaled by alpha / rank (PEFT's lora_alpha)
    c.dropout = 0.0  # on the adapter's input only
    c.targets = ",".join(TARGETS)  # a comma-separated subset of q,k,v,o,gate,up,down
    c.base_dtype = ""  # "" = model.param_dtype; e.g. "bfloat16" halves the frozen base's memory
    c.update(overrides)
    return c


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = model_fields("tiny")
    c.init_from = ""
    c.stages = "sft,pref"
    c.seed = 0
    c.mesh = "data=1,fsdp=-1,tensor=1"
    c.sharding = "fsdp_tp"
    c.data = ml_collections.ConfigDict()
    c.data.sft_task = "oyster_csa_sft_mix"
    c.data.pref_task = "oyster_csa_seed_pref"
    # Mixtures {data spec: rate} as a JSON string (a spec is a path, a task/mixture name or hf:PATH[:split]),
    # e.g. --config.data.sft_mixture='{"runs/lingo/sft.jsonl": 0.85, "oyster_general_seed_sft": 0.15}'.
    # "" = the one source data.sft_task / data.pref_task; set, a mixture replaces it.
    c.data.sft_mixture = ""
    c.data.pref_mixture = ""
    c.data.heldout_pref_task = "oyster_csa_seed_pref"
    c.data.heldout_split = "test"
    c.data.seq_len = 256  # SFT packed row length
    c.data.pref_seq_len = 256  # prompt + completion
    c.data.max_prompt_len = 0  # 0: the data pipeline's default (pref_seq_len // 2)
    # > 0: run each pair as one row of this many tokens, prompt | chosen | rejected, the prompt computed once
    # (data/layouts.SharedPrompt; same losses and gradients). Checked against the longest pair of the data
    # at start-up. -1: the longest pair rounded up to 64 (two rows when that saves nothing). 0: chosen and
    # rejected as two rows of pref_seq_len.
    c.data.pref_shared_len = 0
    c.data.tokenizer = ""  # "" = the task's (the bundled tiny tokenizer); else a tokenizer.json (the model's)
    c.data.chat_format = ""  # "" = the task's; "chatml" (Qwen3) | "deepseek_r1"
    # How a record's safety chain becomes the thinking: "" = the task's (prose for the seed tasks); "tagged"
    # = one <node>value</node> line per node (parseable back into a chain, core.chat.parse_chain); "prose".
    c.data.chain_style = ""
    c.sft = stage_defaults()
    c.pref = pref_defaults()
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=3, async_save=True))
    c.lora = lora_defaults()
    c.log_every = 1
    c.peak_tflops = 0.0  # per device; 0 = the chip's bf16 dense peak (train/metrics.py), on CPU the measured matmul
    c.fresh = False  # a workdir holding another model's checkpoints: move them aside and start over
    c.throttle_seconds = 0.0  # sleep after each step (tests that must interrupt a run mid-way)
    c.synthetic_data = False  # random tokens instead of the data pipeline (to tell input stalls from compute)
    # Held-out evaluations run inside train() at the end of every stage (train/evals.py), e.g.
    # ("heldout_pref_accuracy",); eval_every_steps > 0 also runs them every that many steps.
    c.evals = ()
    c.eval_every_steps = 0
    c.eval_batch_size = 32  # pairs per evaluation batch
    c.eval_max_batches = 0  # 0: every held-out example
    return c


def model_fields(name_or_path: str, **runtime) -> ml_collections.ConfigDict:
    """A model config (bundled name or path) as a ConfigDict with the runtime ModelConfig fields filled in."""
    d = load_config(name_or_path, "models").to_dict()
    full = dataclasses.asdict(ModelConfig.from_dict(d))
    full["rope_scaling"] = d.get("rope_scaling")
    full.pop("lora", None)  # adapters are the experiment's (config.lora), not the model file's
    full.update(runtime)
    if isinstance(full.get("eos_token_id"), tuple):
        full["eos_token_id"] = list(full["eos_token_id"])
    return ml_collections.ConfigDict(full)


def load_experiment(name_or_path) -> ml_collections.ConfigDict:
    """An experiment config: a bundled name (`tiny_csa`: configs/experiments/tiny_csa.py) or a file path."""
    cfg = load_config(name_or_path, "experiments")
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{name_or_path}: get_config() must return an ml_collections.ConfigDict")
    return cfg


def _flat_keys(cfg, prefix="") -> list[str]:
    keys = []
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        keys.append(name)
        if isinstance(v, ml_collections.ConfigDict):
            keys += _flat_keys(v, name + ".")
    return keys


def _parse_value(raw: str, current, key: str):
    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={raw!r}: expected true or false")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--config.{key}={raw!r}: expected an integer") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--config.{key}={raw!r}: expected a number") from None
    if isinstance(current, str):
        return raw
    if current is None or isinstance(current, (list, tuple)):
        if raw.lower() in ("none", "null"):
            return None
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    raise ConfigError(f"--config.{key}: a {type(current).__name__} field cannot be set from the command line")


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Set `key.sub=value` strings on `cfg`; an unknown key is an error that names it and close matches."""
    known = _flat_keys(cfg)
    for key, raw in overrides.items():
        parts = key.split(".")
        node = cfg
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                prefix = ".".join(parts[:i])
                siblings = [k for k in known if k.count(".") == i and (not prefix or k.startswith(prefix + "."))]
                close = difflib.get_close_matches(key, known, n=3, cutoff=0.6) or difflib.get_close_matches(
                    key, siblings, n=3, cutoff=0.3
                )
                hint = f"; did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
                raise ConfigError(f"unknown config key --config.{key}{hint}")
            if i < len(parts) - 1:
                node = node[part]
        leaf = parts[-1]
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"--config.{key} is a group of fields; set one of them, e.g. --config.{key}.<field>")
        with node.unlocked():
            node[leaf] = _parse_value(raw, current, key)
    return cfg


def model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
    """config.model as a ModelConfig, with config.lora's adapters (and base dtype) when lora.rank > 0."""
    d = cfg.model.to_dict()
    try:
        model = ModelConfig.from_dict(d)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"config.model: {e}") from e
    return with_lora(model, cfg.get("lora"))


def with_lora(model: ModelConfig, lora_cfg) -> ModelConfig:
    """`model` with the adapters of config.lora (unchanged when there is none or lora.rank is 0)."""
    if lora_cfg is None or int(lora_cfg.get("rank", 0)) == 0:
        return model
    base_dtype = str(lora_cfg.get("base_dtype", "") or "")
    if base_dtype and base_dtype not in DTYPES:
        raise ConfigError(f"config.lora.base_dtype={base_dtype!r}: expected '' or one of {', '.join(DTYPES)}")
    targets = lora_cfg.get("targets", ",".join(TARGETS))
    try:
        lora = LoraConfig(
            rank=int(lora_cfg.rank), alpha=float(lora_cfg.alpha), dropout=float(lora_cfg.dropout), targets=targets
        )
    except (LoraConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"config.{e}") from e
    return model.replace(lora=lora, **({"param_dtype": base_dtype} if base_dtype else {}))


def stages_of(cfg) -> list[str]:
    stages = [s.strip() for s in str(cfg.stages).split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if not stages or bad:
        raise ConfigError(f"config.stages={cfg.stages!r}: expected 'sft', 'pref' or 'sft,pref' (stages {STAGES})")
    return stages


def validate(cfg: ml_collections.ConfigDict) -> None:
    stages_of(cfg)
    check_ranges(cfg)
    model_config(cfg)
    for name in STAGES:
        s = cfg[name]
        for field in ("num_steps", "batch_size", "microbatches"):
            if int(s[field]) < 1:
                raise ConfigError(f"config.{name}.{field}={s[field]}: must be >= 1")
        if s.batch_size % s.microbatches:
            raise ConfigError(
                f"config.{name}.batch_size={s.batch_size} is not divisible by microbatches={s.microbatches}"
            )
    _check_choice("pref.loss", cfg.pref.loss, PREFERENCE_LOSSES)
    _check_choice("pref.reference", cfg.pref.reference, REFERENCES)
    if isinstance(cfg.sharding, str):
        _check_choice("sharding", cfg.sharding, tuple(RECIPES))
    if cfg.data.get("chat_format"):
        _check_choice("data.chat_format", cfg.data.chat_format, tuple(chat.FORMATS))
    for key in ("sft_mixture", "pref_mixture"):
        parse_mixture(cfg.data.get(key, ""), f"data.{key}")
    if cfg.data.get("chain_style"):
        _check_choice("data.chain_style", cfg.data.chain_style, tuple(chat.CHAIN_STYLES))
    try:
        parse_mesh_spec(cfg.mesh)
    except ValueError as e:
        raise ConfigError(f"config.mesh={cfg.mesh!r}: {e}") from None


def parse_mixture(value, key: str) -> tuple[tuple[str, float], ...]:
    """`config.data.{sft,pref}_mixture` -> ((spec, rate), ...); "" -> (). Accepts a JSON object string (the
    command line) or a mapping / sequence of (spec, rate) pairs (a Python config)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"config.{key}: not a JSON object of {{spec: rate}} ({e.msg} at column {e.colno}); e.g. "
                f'--config.{key}=\'{{"runs/lingo/sft.jsonl": 0.85, "oyster_general_seed_sft": 0.15}}\''
            ) from None
    items = list(value.items()) if hasattr(value, "items") else list(value)
    out = []
    for item in items:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise ConfigError(f"config.{key}: expected {{spec: rate}} pairs, got {item!r}")
        spec, rate = item
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"config.{key}: a data spec must be a non-empty string, got {spec!r}")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate < 0:
            raise ConfigError(f"config.{key}: rate of {spec!r} must be a finite number >= 0, got {rate!r}")
        out.append((spec, float(rate)))
    if not out or sum(r for _, r in out) <= 0:
        raise ConfigError(f"config.{key}: needs at least one source with a positive rate")
    return tuple(out)


def _check_choice(key: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r}: expected one of {', '.join(map(str, choices))}")


# (key, lowest, highest, lowest allowed, highest allowed): numeric ranges checked before anything runs.
_STAGE_RANGES = (
    ("num_steps", 1, None, True, True),
    ("batch_size", 1, None, True, True),
    ("microbatches", 1, None, True, True),
    ("learning_rate", 0.0, None, False, True),
    ("warmup_steps", 0, None, True, True),
    ("min_lr_ratio", 0.0, 1.0, True, True),
    ("weight_decay", 0.0, None, True, True),
    ("b1", 0.0, 1.0, True, False),
    ("b2", 0.0, 1.0, True, False),
    ("eps", 0.0, None, False, True),
    ("grad_clip", 0.0, None, True, True),  # 0: no clipping
    ("logits_chunk", 0, None, True, True),
)
_PREF_RANGES = (
    ("orpo_lambda", 0.0, None, True, True),
    ("beta", 0.0, None, False, True),
    ("simpo_gamma", 0.0, None, True, True),
    ("label_smoothing", 0.0, 0.5, True, False),
)
_TOP_RANGES = (
    ("data.seq_len", 1, None, True, True),
    ("data.pref_seq_len", 1, None, True, True),
    ("data.max_prompt_len", 0, None, True, True),
    ("checkpoint.every_steps", 1, None, True, True),
    ("checkpoint.keep", 0, None, True, True),  # 0: keep every checkpoint
    ("log_every", 1, None, True, True),
    ("peak_tflops", 0.0, None, True, True),  # 0: measured
    ("throttle_seconds", 0.0, None, True, True),
)


def _lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    return node


def _check_range(key: str, value, lo, hi, lo_ok: bool, hi_ok: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config.{key}={value!r}: expected a number")
    if isinstance(lo, int) and not isinstance(value, int):
        raise ConfigError(f"config.{key}={value!r}: expected a whole number")
    if not math.isfinite(value):
        raise ConfigError(f"config.{key}={value}: must be a finite number")
    below = value < lo if lo_ok else value <= lo
    above = hi is not None and (value > hi if hi_ok else value >= hi)
    if below or above:
        low = f"{'>=' if lo_ok else '>'} {lo}"
        want = low if hi is None else f"{low} and {'<=' if hi_ok else '<'} {hi}"
        raise ConfigError(f"config.{key}={value}: must be {want}")


def check_ranges(cfg: ml_collections.ConfigDict) -> None:
    """Every numeric field inside its range, the batch split into whole microbatches, a well-formed mesh:
    a ConfigError naming the key (exit 2) before any work starts. The device count is checked when the
    mesh is built (`trainer.mesh_from_config`): an ahead-of-time compile may target devices not present."""
    for name in STAGES:
        if name not in cfg:
            continue
        ranges = _STAGE_RANGES + (_PREF_RANGES if name == "pref" else ())
        for field, lo, hi, lo_ok, hi_ok in ranges:
            if field in cfg[name]:
                _check_range(f"{name}.{field}", cfg[name][field], lo, hi, lo_ok, hi_ok)
        s = cfg[name]
        if s.batch_size % s.microbatches:
            raise ConfigError(
                f"config.{name}.batch_size={s.batch_size} is not divisible by "
                f"config.{name}.microbatches={s.microbatches}"
            )
    for key, lo, hi, lo_ok, hi_ok in _TOP_RANGES:
        value = _lookup(cfg, key)
        if value is not None:
            _check_range(key, value, lo, hi, lo_ok, hi_ok)
    shared = _lookup(cfg, "data.pref_shared_len")
    if shared is not None and (not isinstance(shared, int) or shared < -1):
        raise ConfigError(f"config.data.pref_shared_len={shared!r}: must be -1 (auto), 0 (off) or a length > 0")
    if "mesh" in cfg:
        check_mesh_spec(cfg.mesh)


def check_mesh_spec(spec) -> dict[str, int]:
    """config.mesh parsed: known axes, whole sizes >= 1 or one -1 (the remaining devices)."""
    try:
        shape = parse_mesh_spec(spec)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.mesh={spec!r}: {e}") from None
    bad = [f"{a}={n}" for a, n in shape.items() if n < 1 and n != -1]
    if bad or sum(n == -1 for n in shape.values()) > 1:
        raise ConfigError(
            f"config.mesh={spec!r}: axis sizes must be >= 1, with at most one -1 (the remaining devices)"
            + (f"; got {', '.join(bad)}" if bad else "")
        )
    return shape


def to_dict(cfg: ml_collections.ConfigDict) -> dict:
    """A JSON-able dict (round-trips through json)."""
    return json.loads(cfg.to_json())
