"""Tiny random Hugging Face models built locally (no downloads), shared by the parity tests."""

from __future__ import annotations

import pathlib

import numpy as np

# name -> (HF class, config kwargs). Covers MHA / GQA / MQA, tied / untied, qkv bias, llama3 RoPE scaling.
TINY_HF = {
    "qwen3_gqa_tied": ("Qwen3", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3_mha_untied": (
        "Qwen3",
        dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    ),
    "qwen2_mqa_tied": ("Qwen2", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
    "qwen2_gqa_untied": (
        "Qwen2",
        dict(num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False),
    ),
    "llama3_gqa_untied": (
        "Llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    "llama3_mqa_tied": (
        "Llama",
        dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True),
    ),
    # attention_bias=True biases q, k, v and o; an odd head_dim that is not hidden/heads
    "qwen3_bias_untied": (
        "Qwen3",
        dict(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True, head_dim=24),
    ),
}


def make_hf_model(kind: str, seed: int = 0, **overrides):
    """A randomly initialised tiny transformers model; weights perturbed so that every tensor matters."""
    import torch
    import transformers

    family, kwargs = TINY_HF[kind]
    base = dict(
        vocab_size=101,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        head_dim=16,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
    )
    if family == "Llama":
        base["attention_bias"] = False
    cfg_cls = getattr(transformers, f"{family}Config")
    model_cls = getattr(transformers, f"{family}ForCausalLM")
    config = cfg_cls(**(base | kwargs | overrides))
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)
    model.config._attn_implementation = "eager"
    return model


def save_hf_model(model, path: pathlib.Path) -> pathlib.Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=None if mask is None else torch.tensor(mask, dtype=torch.long),
        )
    return out.logits.float().numpy()


# Keys transformers 4 wrote that transformers 5 renamed (torch_dtype -> dtype; rope_theta and rope_scaling ->
# rope_parameters): an export must not write them.
TRANSFORMERS4_KEYS = ("torch_dtype", "rope_theta", "rope_scaling")


def transformers_rewrite_of(config_dir: pathlib.Path, tmp: pathlib.Path) -> dict:
    """config.json as the pinned transformers writes it back: loaded with AutoConfig, saved with
    save_pretrained (the independent reference for the keys an export should write)."""
    import json

    import transformers

    transformers.AutoConfig.from_pretrained(config_dir).save_pretrained(tmp)
    return json.loads((tmp / "config.json").read_text())


def assert_transformers5_config(config_dir: pathlib.Path, tmp: pathlib.Path) -> None:
    """Every key of `config_dir/config.json` is one transformers 5 writes itself, with the same value."""
    import json

    ours = json.loads((config_dir / "config.json").read_text())
    theirs = transformers_rewrite_of(config_dir, tmp)
    assert not set(TRANSFORMERS4_KEYS) & set(ours), sorted(set(TRANSFORMERS4_KEYS) & set(ours))
    assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    assert {k: ours[k] for k in ours} == {k: theirs[k] for k in ours}


def save_tiny_chat_model(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A tiny random Llama chat model as a complete Hugging Face directory: the weights saved by transformers,
    the bundled seed tokenizer (4096 ids) with its ChatML template, as `from_pretrained` and TRL read them."""
    import torch
    import transformers

    from oyster_jax.convert.hf_tokenizer import write_tokenizer
    from oyster_jax.data.vocab import default_tokenizer_path

    config = transformers.LlamaConfig(
        vocab_size=4096,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attention_bias=False,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger-than-init weights: greedy outputs then are not one repeated token
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(4.0)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(path, default_tokenizer_path())
    for k, v in ids.items():
        setattr(model.config, k, v)
    model.save_pretrained(path, safe_serialization=True)
    return path
