"""Checkpoint conversion: Hugging Face safetensors <-> params, and Orbax model checkpoints.

from oyster_jax import convert
cfg, params, tokenizer = convert.open_model(path)   # HF dir, Orbax checkpoint or trainer workdir
cfg, params = convert.from_hf(hf_dir)
convert.to_hf(cfg, params, out_dir, dtype="bfloat16")
convert.save_model(ckpt_dir, cfg, params); cfg, params = convert.load_model(ckpt_dir)
convert.gguf_to_hf_dir("model.Q4_1.gguf", out_dir)      # llama.cpp GGUF -> HF directory (tokenizer included)
convert.to_peft(cfg, params, out_dir)                  # LoRA adapters -> PEFT adapter_config.json + safetensors
cfg, params = convert.from_peft(base_dir, adapter_dir) # base + a PEFT LoRA adapter (cfg.lora set)
"""

from oyster_jax.convert.checkpoint import find_model_checkpoint, load_model, model_checkpoints, save_model
from oyster_jax.convert.formats import (
    check_tokenizer,
    checkpoint_format,
    find_tokenizer,
    load_tokenizer,
    load_weights,
    open_model,
    resolve_model_dir,
)
from oyster_jax.convert.gguf import gguf_to_hf_dir
from oyster_jax.convert.hf import from_hf, hf_tensor_names, read_hf_config, to_hf
from oyster_jax.convert.peft import from_peft, load_lora_stage, to_peft
from oyster_jax.convert.safetensors_io import CheckpointFormatError

__all__ = [
    "CheckpointFormatError",
    "check_tokenizer",
    "checkpoint_format",
    "find_model_checkpoint",
    "find_tokenizer",
    "from_hf",
    "from_peft",
    "gguf_to_hf_dir",
    "hf_tensor_names",
    "load_model",
    "load_lora_stage",
    "load_tokenizer",
    "load_weights",
    "model_checkpoints",
    "open_model",
    "read_hf_config",
    "resolve_model_dir",
    "save_model",
    "to_hf",
    "to_peft",
]
