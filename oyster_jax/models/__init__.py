"""The base LLM: `ModelConfig`, parameter init and `forward`.

from oyster_jax import models
cfg = models.ModelConfig(arch="qwen3", ...)          # or ModelConfig.from_hf_config(config_json)
params = models.init_params(cfg, jax.random.key(0))
logits = models.forward(cfg, params, tokens)         # int32 [B, T] -> float32 [B, T, V]
"""

from oyster_jax.models import lora
from oyster_jax.models.attention import AttentionBackendError, attention, resolve_impl, xla_attention
from oyster_jax.models.config import ConfigError, ModelConfig, model_config_from_file
from oyster_jax.models.lora import LoraConfig
from oyster_jax.models.model import (
    abstract_params,
    check_params,
    default_positions,
    forward,
    hidden_states,
    init_params,
    logical_axes,
    logits_from_hidden,
    param_shardings,
)

__all__ = [
    "AttentionBackendError",
    "ConfigError",
    "LoraConfig",
    "ModelConfig",
    "abstract_params",
    "attention",
    "check_params",
    "default_positions",
    "forward",
    "hidden_states",
    "init_params",
    "logical_axes",
    "lora",
    "logits_from_hidden",
    "model_config_from_file",
    "param_shardings",
    "resolve_impl",
    "xla_attention",
]
