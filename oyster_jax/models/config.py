"""ModelConfig: one dataclass for Qwen3, Qwen2 / DeepSeek-R1-Distill-Qwen and Llama 3 decoders.

The config owns the translation to and from Hugging Face `config.json` and the FLOPs-per-token count
used for MFU, so that no other module needs to know the HF field names.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.resources
import importlib.util
import json
import os
import pathlib
from typing import Any

import jax.numpy as jnp

from oyster_jax.models.attention import ATTENTION_IMPLS
from oyster_jax.models.backend import MATH_IMPLS
from oyster_jax.models.lora import LoraConfig, LoraConfigError

# HF `architectures[0]` -> our architecture family. Everything else is refused with a clear error.
HF_ARCHITECTURES = {
    "Qwen3ForCausalLM": "qwen3",
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
}
_HF_NAME = {v: k for k, v in HF_ARCHITECTURES.items()}
_HF_MODEL_TYPE = {"qwen3": "qwen3", "qwen2": "qwen2", "llama": "llama"}

# remat_policy -> what `nn.remat` saves for the backward pass: the name of a `jax.checkpoint_policies` policy,
# or None for "full" (save nothing, recompute every layer); "none" is no remat. The model reads this table.
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots": "checkpoint_dots",
    "dots_no_batch": "checkpoint_dots_with_no_batch_dims",
}
DTYPES = ("float32", "bfloat16", "float16")
# Fields that say how the network runs, not what it is: model configs (configs/models/*.py) leave them out.
RUNTIME_FIELDS = ("param_dtype", "dtype", "attention_impl", "remat_policy", "scan_layers")


class ConfigError(ValueError):
    """A model config that we cannot honour; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder's architecture and how it runs. The defaults are the tiny model (configs/models/tiny.py is
    `ModelConfig()`): ~5.0M parameters with the bundled 4096-id tokenizer, the model of the tests and demo."""

    arch: str = "qwen3"  # qwen3 | qwen2 | llama
    vocab_size: int = 4096
    hidden_size: int = 256  # D
    intermediate_size: int = 1024  # F
    num_layers: int = 4  # L
    num_heads: int = 4  # N
    num_kv_heads: int = 2  # K
    head_dim: int = 64  # H
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    # None, or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; stored as a sorted tuple of items to keep the config hashable.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 family: True
    o_bias: bool = False  # Llama / Qwen3 with attention_bias=true also bias the output projection
    qk_norm: bool = True  # Qwen3: RMSNorm on each head of q and k before RoPE
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype
    attention_impl: str = "auto"  # models.attention.ATTENTION_IMPLS
    math_impl: str = "auto"  # "plain" einsums + autodiff | "cpu_tuned" layouts; auto: by backend (models.backend)
    remat_policy: str = "none"
    scan_layers: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # Low-rank adapters on the projections (models.lora); None: none. Left out of to_dict() when None, so the
    # model_config.json of a model without adapters is what it always was.
    lora: LoraConfig | None = None

    def __post_init__(self):
        if isinstance(self.lora, dict):
            try:
                object.__setattr__(self, "lora", LoraConfig.from_dict(self.lora))
            except (LoraConfigError, TypeError) as e:
                raise ConfigError(str(e)) from e
        if self.arch not in _HF_NAME:
            raise ConfigError(f"arch={self.arch!r}: expected one of {sorted(_HF_NAME)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        for field, allowed in (
            ("attention_impl", ATTENTION_IMPLS),
            ("math_impl", MATH_IMPLS),
            ("remat_policy", REMAT_POLICIES),
            ("param_dtype", DTYPES),
            ("dtype", DTYPES),
        ):
            if getattr(self, field) not in allowed:
                raise ConfigError(f"{field}={getattr(self, field)!r}: expected one of {', '.join(allowed)}")
        if isinstance(self.rope_scaling, dict):  # accept a dict, store it hashable
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.rope_scaling is not None:
            kind = self.rope_scaling_dict.get("rope_type", self.rope_scaling_dict.get("type"))
            if kind not in ("llama3", "default"):
                raise ConfigError(f"rope_scaling.rope_type={kind!r}: only 'llama3' is supported")

    # ----------------------------------------------------------------------------------------------
    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rope_scaling"] = self.rope_scaling_dict or None
        if self.lora is None:
            del d["lora"]
        else:
            d["lora"] = self.lora.to_dict()
        if isinstance(self.eos_token_id, tuple):
            d["eos_token_id"] = list(self.eos_token_id)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, d: dict[str, Any], **overrides) -> ModelConfig:
        """Hugging Face `config.json` (as a dict) -> ModelConfig. Unsupported architectures are refused."""
        archs = d.get("architectures") or []
        arch_name = archs[0] if archs else None
        if arch_name is None:  # fall back on model_type
            arch_name = {v: k for k, v in HF_ARCHITECTURES.items()}.get(d.get("model_type"))
        if arch_name not in HF_ARCHITECTURES:
            raise ConfigError(
                f"config.json: architectures={archs} (model_type={d.get('model_type')!r}) is not supported; "
                f"supported: {sorted(HF_ARCHITECTURES)}"
            )
        arch = HF_ARCHITECTURES[arch_name]
        if d.get("use_sliding_window"):
            raise ConfigError("config.json: use_sliding_window=true is not supported")
        if d.get("mlp_bias"):
            raise ConfigError("config.json: mlp_bias=true is not supported")
        num_heads = d["num_attention_heads"]
        head_dim = d.get("head_dim") or d["hidden_size"] // num_heads
        rope_scaling = d.get("rope_scaling")
        rope_theta = d.get("rope_theta")
        rope_params = d.get("rope_parameters")  # transformers >= 5 nests theta and scaling here
        if isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_params.get("rope_type", "default") != "default":
                rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        if rope_scaling is not None and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
            rope_scaling = None
        if rope_scaling is not None:
            rope_scaling = {
                k: rope_scaling[k]
                for k in (
                    "rope_type",
                    "factor",
                    "low_freq_factor",
                    "high_freq_factor",
                    "original_max_position_embeddings",
                )
                if k in rope_scaling
            } | ({"rope_type": rope_scaling["type"]} if "type" in rope_scaling else {})
        kwargs = dict(
            arch=arch,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=d.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=rope_scaling,
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=True if arch == "qwen2" else bool(d.get("attention_bias", False)),
            o_bias=arch != "qwen2" and bool(d.get("attention_bias", False)),
            qk_norm=arch == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_config(self) -> dict[str, Any]:
        """ModelConfig -> a Hugging Face `config.json` dict that `transformers` loads."""
        d: dict[str, Any] = {
            "architectures": [_HF_NAME[self.arch]],
            "model_type": _HF_MODEL_TYPE[self.arch],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict or None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.arch == "qwen2":
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        else:
            if self.qkv_bias != self.o_bias:
                raise ConfigError(f"{self.arch}: Hugging Face ties qkv_bias and o_bias (attention_bias); got both")
            d["attention_bias"] = self.qkv_bias
        if self.arch == "qwen3":
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        if self.arch == "llama":
            d.update(mlp_bias=False, pretraining_tp=1)
        return d

    # ----------------------------------------------------------------------------------------------
    def _layer_matmul_params(self) -> int:
        D, F, N, K, H = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        return 2 * D * N * H + 2 * D * K * H + 3 * D * F  # q, o; k, v; gate, up, down

    def num_params(self) -> int:
        D, N, K, H = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        small = 2 * D  # the two layer norms
        small += N * H + 2 * K * H if self.qkv_bias else 0
        small += 2 * H if self.qk_norm else 0
        small += D if self.o_bias else 0
        embed = self.vocab_size * D * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (self._layer_matmul_params() + small) + embed + D

    def _layer_adapter_params(self) -> int:
        """LoRA A and B of one layer: rank x (fan-in + fan-out) per targeted projection."""
        if self.lora is None:
            return 0
        D, F, N, K, H = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        fans = {"q": D + N * H, "k": D + K * H, "v": D + K * H, "o": N * H + D}
        fans |= {"gate": D + F, "up": D + F, "down": F + D}
        return self.lora.rank * sum(fans[t] for t in self.lora.targets)

    def flops_per_token(self, seq_len: int, causal: bool = True) -> float:
        """Training FLOPs per token, attention counted causal-aware. Full fine-tuning: forward + backward =
        3x forward. With LoRA the frozen base's weight gradients are never computed, so its matmuls cost 2x
        forward (forward + input gradients), attention still 3x, the adapters 3x."""
        dense = 2 * (self.num_layers * self._layer_matmul_params() + self.vocab_size * self.hidden_size)
        # QK^T and PV: 2 matmuls x 2 FLOPs x N*H per key; a causal token sees (T+1)/2 keys on average.
        keys = (seq_len + 1) / 2 if causal else seq_len
        attn = self.num_layers * 4 * self.num_heads * self.head_dim * keys
        if self.lora is None:
            return 3.0 * (dense + attn)
        return 2.0 * dense + 3.0 * (attn + 2 * self.num_layers * self._layer_adapter_params())


def dtype_of(name: str):
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return getattr(jnp, name)


BUNDLED_CONFIGS = "oyster_jax.configs"  # the repository's configs/, shipped in the wheel (setup.py package_dir)


def bundled_configs(group: str) -> list[str]:
    """Names of the bundled configs of `group` ("models" or "experiments"): configs/<group>/<name>.py."""
    root = importlib.resources.files(f"{BUNDLED_CONFIGS}.{group}")
    return sorted(p.name[:-3] for p in root.iterdir() if p.name.endswith(".py") and not p.name.startswith("_"))


def _get_config(module, where: str):
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{where}: has no get_config()")
    return module.get_config()


def load_config_module(path: str | os.PathLike):
    """Import an ml_collections config file (any `x.py` with `get_config()`) and return its `get_config()`."""
    path = pathlib.Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"_oyster_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _get_config(module, str(path))


def load_config(name_or_path: str | os.PathLike, group: str):
    """`get_config()` of the bundled configs/<group>/<name>.py by name, or of a config file by path (`*.py`)."""
    text = os.fspath(name_or_path)
    if text.endswith(".py") or "/" in text or os.sep in text:
        return load_config_module(text)
    names = bundled_configs(group)
    if text not in names:
        close = difflib.get_close_matches(text, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"{text!r} is not a bundled {group[:-1]} config ({hint}bundled: {', '.join(names)}); "
            "or give the path of a .py file with get_config()"
        )
    module_name = f"{BUNDLED_CONFIGS}.{group}.{text}"
    return _get_config(importlib.import_module(module_name), module_name)


def model_config_from_file(path: str | os.PathLike, **overrides) -> ModelConfig:
    """A model config by name (`qwen3_14b`: configs/models/qwen3_14b.py, bundled) or path -> ModelConfig."""
    cd = load_config(path, "models")
    d = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd)
    try:
        return ModelConfig.from_dict(d | overrides)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from e
