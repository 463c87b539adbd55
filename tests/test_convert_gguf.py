"""convert.gguf on tiny GGUF files written with gguf's GGUFWriter: tensors, llama's q/k row order, config,
tokenizer and chat template, against the arrays the files were made from and against transformers' own GGUF
loader; refusals exit 2 naming the tensor or metadata key and leave the output directory alone."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from oyster_jax.convert import gguf as gguf_lib
from oyster_jax.convert import gguf_to_hf
from oyster_jax.convert.safetensors_io import SafetensorsFile
from tests import tolerances as tol
from tests.gguf_files import CHATML_TEMPLATE, llama_cpp_permute, tiny_vocab, write_tiny_gguf
from tests.hf_models import assert_transformers5_config

# One file exercises every supported tensor type, permuted (q, k) and plain tensors among them.
LLAMA_TYPES = {
    "token_embd.weight": "Q8_0",
    "blk.0.attn_q.weight": "F32",
    "blk.0.attn_k.weight": "F16",
    "blk.0.attn_v.weight": "BF16",
    "blk.0.attn_output.weight": "Q4_0",
    "blk.0.ffn_gate.weight": "Q4_1",
    "blk.0.ffn_up.weight": "Q4_K",
    "blk.0.ffn_down.weight": "Q5_K",
    "blk.1.attn_q.weight": "Q6_K",
    "blk.1.attn_k.weight": "Q4_K",
    "blk.1.attn_v.weight": "Q4_0",
    "output.weight": "F16",
}


def _convert(tmp_path, gguf_path, *extra, subprocess_run=False):
    """Run the CLI: in this process (fast), or as `python -m` to see the real exit code and stderr."""
    out = tmp_path / "hf"
    argv = ["--gguf", str(gguf_path), "--out", str(out), *extra]
    if subprocess_run:
        cmd = [sys.executable, "-m", "oyster_jax.convert.gguf_to_hf", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True)
        return done.returncode, done.stderr, out
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = gguf_to_hf.main(argv)
    return code, err.getvalue(), out


def _tensors(out):
    f = SafetensorsFile(out / "model.safetensors")
    return {k: np.asarray(f.get(k), np.float32) for k in f.keys()}


def test_unpermute_inverts_llama_cpp_order():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of 8 rows
    np.testing.assert_array_equal(gguf_lib.unpermute_qk_rows(llama_cpp_permute(w, 2), 2), w)
    # Row 1 of a stored head is HF row 4 (the first row of the second rotary half), by llama.cpp's layout.
    np.testing.assert_array_equal(llama_cpp_permute(w, 2)[1], w[4])
    b = np.arange(16, dtype=np.float32)
    np.testing.assert_array_equal(gguf_lib.unpermute_qk_rows(llama_cpp_permute(b[:, None], 2)[:, 0], 2), b)


def test_llama_every_type_imports_to_the_expected_arrays(tmp_path):
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gguf(path, "llama", LLAMA_TYPES)
    code, err, out = _convert(tmp_path, path)
    assert code == 0, err
    got = _tensors(out)
    assert set(got) == set(hf)
    # Exactly representable types come back exactly, in HF order (the q/k permutation undone).
    np.testing.assert_array_equal(
        got["model.layers.0.self_attn.q_proj.weight"], hf["model.layers.0.self_attn.q_proj.weight"]
    )
    np.testing.assert_array_equal(
        got["model.layers.0.self_attn.k_proj.weight"],
        hf["model.layers.0.self_attn.k_proj.weight"].astype(np.float16).astype(np.float32),
    )
    for name in ("model.layers.1.mlp.down_proj.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"):
        np.testing.assert_array_equal(got[name], hf[name])
    # Block types quantize rows of 32/256 values, so they commute with the row permutation.
    for gguf_name, hf_name in (
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight"),
        ("blk.1.attn_v.weight", "model.layers.1.self_attn.v_proj.weight"),
    ):
        kind = T[LLAMA_TYPES[gguf_name]]
        np.testing.assert_array_equal(got[hf_name], dequantize(quantize(hf[hf_name], kind), kind))
    # K-quant blocks are random bytes: re-permuting our q/k gives back the file's own row order.
    reader = gguf_lib.read_gguf(path)
    stored = {t.name: dequantize(t.data, t.tensor_type) for t in reader.reader.tensors}
    np.testing.assert_array_equal(
        llama_cpp_permute(got["model.layers.1.self_attn.q_proj.weight"], 4), stored["blk.1.attn_q.weight"]
    )
    np.testing.assert_array_equal(
        llama_cpp_permute(got["model.layers.1.self_attn.k_proj.weight"], 2), stored["blk.1.attn_k.weight"]
    )
    np.testing.assert_array_equal(got["model.layers.0.mlp.up_proj.weight"], stored["blk.0.ffn_up.weight"])

    config = json.loads((out / "config.json").read_text())
    assert (config["architectures"], config["num_hidden_layers"], config["hidden_size"]) == (
        ["LlamaForCausalLM"],
        2,
        256,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 64)
    assert config["tie_word_embeddings"] is False and config["intermediate_size"] == 256
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_llama_matches_transformers_gguf_loader(tmp_path):
    """transformers reads and dequantizes the file with its own code: same tensors, same logits."""
    import torch
    import transformers

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "llama", LLAMA_TYPES)
    code, err, out = _convert(tmp_path, path)
    assert code == 0, err
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32)
    ours = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ref_sd = ref.state_dict()
    for name, value in _tensors(out).items():
        np.testing.assert_allclose(value, ref_sd[name].numpy(), rtol=0, atol=tol.GGUF_DEQUANT, err_msg=name)
    ids = torch.tensor([[1, 40, 77, 200, 261, 5, 9, 2]])
    with torch.no_grad():
        diff = (ref(ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= tol.HF_LOGITS_F32, diff


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_imports_unpermuted_with_biases_and_norms(tmp_path, arch):
    path = tmp_path / "tiny.gguf"
    hf = write_tiny_gguf(path, arch, tied=True, hidden=64, heads=4, kv_heads=1, ffn=96)
    code, err, out = _convert(tmp_path, path)
    assert code == 0, err
    got = _tensors(out)
    assert set(got) == set(hf)
    for name in hf:
        np.testing.assert_array_equal(got[name], hf[name], err_msg=name)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch and config["tie_word_embeddings"] is True
    from oyster_jax import convert

    cfg, _ = convert.from_hf(out)
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.num_kv_heads) == (arch == "qwen2", arch == "qwen3", 1)


def test_tokenizer_and_chat_template_from_metadata(tmp_path):
    import transformers

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "llama", hidden=64, heads=2, kv_heads=1, ffn=64)
    code, err, out = _convert(tmp_path, path, "--dtype", "bfloat16")
    assert code == 0, err
    tokens, _, _ = tiny_vocab()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = tok("the cat 42<|im_end|>", add_special_tokens=False)["input_ids"]
    # " the" is one merged token, digits stand alone (smollm pre-tokenizer), the control token stays whole.
    assert [tokens[i] for i in ids] == ["t", "he", "Ġ", "c", "a", "t", "Ġ", "4", "2", "<|im_end|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "the cat 42"
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("the theme in a tin", "<|im_start|>user\nthe a<|im_end|>\n"):
        assert tok(text, add_special_tokens=False)["input_ids"] == ref(text, add_special_tokens=False)["input_ids"]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHATML_TEMPLATE and config["eos_token"] == "<|im_end|>"
    messages = [{"role": "user", "content": "the a"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nthe a<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_config_has_the_keys_transformers_5_writes(tmp_path, arch):
    """config.json holds only keys (and values) that the pinned transformers writes itself when it loads and
    saves the config again: `dtype` and `rope_parameters`, not torch_dtype / rope_theta / rope_scaling."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, arch, hidden=64, heads=2, kv_heads=1, ffn=64)
    code, err, out = _convert(tmp_path, path)
    assert code == 0, err
    (tmp_path / "rewritten").mkdir()
    assert_transformers5_config(out, tmp_path / "rewritten")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "default" and config["dtype"] == "float32"


def test_cli_reads_the_header_once(tmp_path, monkeypatch):
    import gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "llama", hidden=64, heads=2, kv_heads=1, ffn=64)
    opened = []
    real = gguf.GGUFReader

    def counting_reader(*args, **kwargs):
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    code, err, _ = _convert(tmp_path, path)
    assert code == 0, err
    assert len(opened) == 1, opened


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(drop=("blk.1.ffn_down.weight",)), "blk.1.ffn_down.weight"),
        (dict(metadata={"llama.block_count": "two"}), "llama.block_count"),
        (dict(metadata={"llama.embedding_length": None}), "llama.embedding_length"),
        (dict(metadata={"llama.feed_forward_length": 100}), "blk.0.ffn_gate.weight"),
        (dict(metadata={"tokenizer.ggml.pre": "mystery"}), "tokenizer.ggml.pre"),
        (dict(metadata={"llama.rope.dimension_count": 16}), "llama.rope.dimension_count"),
    ],
    ids=["missing-tensor", "bad-type", "missing-key", "shape", "pre-tokenizer", "partial-rope"],
)
def test_bad_file_exits_2_naming_it_and_keeps_the_output(tmp_path, kwargs, named):
    path = tmp_path / "bad.gguf"
    write_tiny_gguf(path, "llama", hidden=64, heads=2, kv_heads=1, ffn=64, **kwargs)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("good")
    code, err, _ = _convert(tmp_path, path)
    assert code == 2 and named in err, err
    assert (out / "keep.txt").read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "hf"]


def test_unsupported_architecture_and_not_a_gguf_file(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_tiny_gguf(path, "llama", hidden=64, heads=2, kv_heads=1, ffn=64, declared_arch="gpt2")
    code, err, _ = _convert(tmp_path, path)
    assert code == 2 and "general.architecture='gpt2'" in err, err
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    code, err, _ = _convert(tmp_path, junk, subprocess_run=True)  # the real process: exit 2, no traceback
    assert code == 2 and "junk.gguf" in err and "Traceback" not in err, err
