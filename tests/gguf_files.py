"""Tiny GGUF files written with gguf's own GGUFWriter, as llama.cpp's converter would lay them out.

`write_tiny_gguf` starts from random Hugging Face-layout arrays, reorders llama's q/k rows the way
llama.cpp's convert_hf_to_gguf does (written here from its description, independently of the importer's
inverse), stores each tensor in the type the test asks for and returns the arrays in HF order.
"""

from __future__ import annotations

import pathlib

import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2's byte-level BPE uses for bytes 0..255, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): specials (CONTROL = 3), the byte alphabet, then a few merged tokens."""
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    merged = ["Ġt", "he", "Ġthe", "in", "Ġa"]
    tokens = SPECIALS + byte_level_alphabet() + merged
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types, merges


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF -> llama.cpp row order of a q/k projection: each head's two rotary halves interleaved row by row."""
    rows = w.shape[0]
    half = rows // heads // 2
    out = np.empty_like(w)
    for h in range(heads):
        for part in range(2):
            for j in range(half):
                out[h * 2 * half + 2 * j + part] = w[h * 2 * half + part * half + j]
    return out


def _store(name, hf, kind, permute_heads):
    """(array, raw_dtype) for GGUFWriter.add_tensor; the HF-order values the file then represents."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    stored = llama_cpp_permute(hf, permute_heads) if permute_heads else hf
    if kind == "F32":
        return stored.astype(np.float32), None
    if kind == "F16":
        return stored.astype(np.float16), None
    if kind in ("BF16", "Q8_0", "Q4_0", "Q4_1"):
        return quantize(stored.astype(np.float32), T[kind]), T[kind]
    # gguf cannot quantize K-quants: random blocks with sane f16 scales stand in for a quantizer's output.
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    block_bytes = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[kind]
    rows, cols = stored.shape
    blocks = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
    scale = np.array([0.01], np.float16).view(np.uint8)
    if kind == "Q6_K":  # ql, qh, int8 scales, then d
        blocks[..., 208:210] = scale
    else:  # d, dmin, then 12 packed scale bytes and the quants
        blocks[..., 0:2] = scale
        blocks[..., 2:4] = scale
    raw = blocks.reshape(rows, -1)
    return raw, T[kind]


def write_tiny_gguf(
    path: pathlib.Path,
    arch: str = "llama",
    types: dict[str, str] | None = None,
    *,
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 256,
    layers: int = 2,
    tied: bool = False,
    drop: tuple[str, ...] = (),
    metadata: dict | None = None,
    declared_arch: str | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write a tiny `arch` model to `path`; returns {HF tensor name: the float32 values in HF order}.

    `types` maps GGUF tensor names to a tensor type (default F32); `drop` leaves tensors out; `metadata`
    overrides or adds keys ({key: value or None to remove}); `declared_arch` is what general.architecture says.
    """
    import gguf

    types = types or {}
    tokens, token_types, merges = tiny_vocab()
    vocab = len(tokens)
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.5

    q, kv = heads * head_dim, kv_heads * head_dim
    tensors = {"token_embd.weight": ("model.embed_tokens.weight", rand(vocab, hidden), 0)}
    for i in range(layers):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        llama = arch == "llama"
        tensors |= {
            b + "attn_norm.weight": (h + "input_layernorm.weight", 1 + rand(hidden), 0),
            b + "ffn_norm.weight": (h + "post_attention_layernorm.weight", 1 + rand(hidden), 0),
            b + "attn_q.weight": (h + "self_attn.q_proj.weight", rand(q, hidden), heads if llama else 0),
            b + "attn_k.weight": (h + "self_attn.k_proj.weight", rand(kv, hidden), kv_heads if llama else 0),
            b + "attn_v.weight": (h + "self_attn.v_proj.weight", rand(kv, hidden), 0),
            b + "attn_output.weight": (h + "self_attn.o_proj.weight", rand(hidden, q), 0),
            b + "ffn_gate.weight": (h + "mlp.gate_proj.weight", rand(ffn, hidden), 0),
            b + "ffn_up.weight": (h + "mlp.up_proj.weight", rand(ffn, hidden), 0),
            b + "ffn_down.weight": (h + "mlp.down_proj.weight", rand(hidden, ffn), 0),
        }
        if arch == "qwen2":
            tensors |= {
                b + "attn_q.bias": (h + "self_attn.q_proj.bias", rand(q), 0),
                b + "attn_k.bias": (h + "self_attn.k_proj.bias", rand(kv), 0),
                b + "attn_v.bias": (h + "self_attn.v_proj.bias", rand(kv), 0),
            }
        if arch == "qwen3":
            tensors |= {
                b + "attn_q_norm.weight": (h + "self_attn.q_norm.weight", 1 + rand(head_dim), 0),
                b + "attn_k_norm.weight": (h + "self_attn.k_norm.weight", 1 + rand(head_dim), 0),
            }
    tensors["output_norm.weight"] = ("model.norm.weight", 1 + rand(hidden), 0)
    if not tied:
        tensors["output.weight"] = ("lm_head.weight", rand(vocab, hidden), 0)

    meta = {
        f"{arch}.block_count": layers,
        f"{arch}.context_length": 512,
        f"{arch}.embedding_length": hidden,
        f"{arch}.feed_forward_length": ffn,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.rope.dimension_count": head_dim,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": token_types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.chat_template": CHATML_TEMPLATE,
    }
    meta |= metadata or {}
    w = gguf.GGUFWriter(str(path), declared_arch or arch)
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    expected = {}
    for name, (hf_name, hf, permute_heads) in tensors.items():
        if name in drop:
            continue
        arr, raw = _store(name, hf, types.get(name, "F32"), permute_heads)
        w.add_tensor(name, arr, raw_dtype=raw)
        expected[hf_name] = hf
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected
