"""Checkpoint conversion: Hugging Face safetensors <-> params, and Orbax model checkpoints.

from oyster_jax import convert
cfg, params = convert.from_hf(hf_dir)
convert.to_hf(cfg, params, out_dir, dtype="bfloat16")
convert.save_model(ckpt_dir, cfg, params); cfg, params = convert.load_model(ckpt_dir)
convert.gguf_to_hf_dir("model.Q4_1.gguf", out_dir)      # llama.cpp GGUF -> HF directory (tokenizer included)
"""

from oyster_jax.convert.checkpoint import find_model_checkpoint, load_model, save_model
from oyster_jax.convert.gguf import gguf_to_hf_dir
from oyster_jax.convert.hf import from_hf, hf_tensor_names, read_hf_config, to_hf
from oyster_jax.convert.safetensors_io import CheckpointFormatError

__all__ = [
    "CheckpointFormatError",
    "find_model_checkpoint",
    "from_hf",
    "gguf_to_hf_dir",
    "hf_tensor_names",
    "load_model",
    "read_hf_config",
    "save_model",
    "to_hf",
]
