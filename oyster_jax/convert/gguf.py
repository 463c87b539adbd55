"""GGUF (llama.cpp / Ollama) -> Hugging Face directory: config, dequantized weights, tokenizer, chat template.

    from oyster_jax.convert import gguf
    out = gguf.gguf_to_hf_dir("model.Q4_1.gguf", "out_dir", dtype="float32")
    cfg = gguf.read_gguf(path).config          # ModelConfig from the GGUF metadata alone

The `gguf` package reads the file (memory-mapped) and dequantizes each tensor; nothing here unpacks
quantized blocks by hand. What we add is the mapping to Hugging Face: tensor names, llama.cpp's
reordering of the Q/K rows (llama only, see `unpermute_qk_rows`), the ModelConfig from metadata, and a
`tokenizer.json` built with the `tokenizers` library from the `tokenizer.ggml.*` arrays.

Architectures: llama, qwen2, qwen3. Tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K.
Every refusal raises `GGUFFormatError` naming the metadata key or the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import numpy as np
from einops import rearrange

from oyster_jax.convert.hf import hf_config_json, hf_tensor_names
from oyster_jax.convert.safetensors_io import CheckpointFormatError, write_file
from oyster_jax.core.files import atomic_directory
from oyster_jax.models.config import ConfigError, ModelConfig, dtype_of

__all__ = [
    "ARCHITECTURES",
    "GGUFFile",
    "GGUFFormatError",
    "TENSOR_TYPES",
    "gguf_to_hf_dir",
    "read_gguf",
    "unpermute_qk_rows",
]

ARCHITECTURES = ("llama", "qwen2", "qwen3")
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")

# GGUF tensor name -> Hugging Face tensor name; `{i}` is the layer index.
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

# tokenizer.ggml.pre -> how text is split before BPE, as llama.cpp does for that vocabulary.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "gpt2": ("byte_level", None),  # the GPT-2 regex that ByteLevel applies itself
    "default": ("byte_level", None),
    "smollm": ("digits_then_byte_level", None),  # each digit alone, then the GPT-2 regex
    "qwen2": ("split", _QWEN2_SPLIT),
    "deepseek-r1-qwen": ("split", _QWEN2_SPLIT),
    "llama-bpe": ("split", _LLAMA3_SPLIT),
    "llama3": ("split", _LLAMA3_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's token attributes)


class GGUFFormatError(CheckpointFormatError):
    """A GGUF file we cannot convert; the message names the file and the metadata key or tensor."""


def unpermute_qk_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of the rows of a llama q/k projection (weight [heads*H, D] or bias [heads*H]).

    Hugging Face rotates the two halves of each head (RoPE "rotate half": row r pairs with r + H/2);
    llama.cpp rotates adjacent pairs, so its converter interleaves the halves: HF row `half*H/2 + j` of a
    head is stored as row `2*j + half`. This reads them back in HF order.
    """
    if w.shape[0] % (2 * heads):
        raise ValueError(f"{w.shape[0]} rows do not split into {heads} heads of an even size")
    return rearrange(w, "(n j two) ... -> (n two j) ...", n=heads, two=2)


@dataclasses.dataclass(frozen=True)
class _Planned:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # Hugging Face shape
    fetch: Callable[[], np.ndarray]  # dequantized, in HF layout, float32


class GGUFFile:
    """One GGUF file: metadata access that names the key on every refusal, the config, the tensors."""

    def __init__(self, path: str | os.PathLike):
        from gguf import GGUFReader

        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: GGUF file not found")
        try:
            self.reader = GGUFReader(self.path)
        except (ValueError, OSError, IndexError, KeyError) as e:
            raise GGUFFormatError(f"{self.path}: not a readable GGUF file ({e})") from None
        self.arch = self.meta("general.architecture", str)
        if self.arch not in ARCHITECTURES:
            raise GGUFFormatError(
                f"{self.path}: general.architecture={self.arch!r} is not supported; supported: {list(ARCHITECTURES)}"
            )
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.config = self._config()

    # -- metadata --------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def meta(self, key: str, kind: type, default=...):
        """The value of metadata `key`, checked to be of `kind` (int, float, str, bool or list)."""
        from gguf import GGUFValueType

        field = self.reader.fields.get(key)
        if field is None:
            if default is ...:
                raise GGUFFormatError(f"{self.path}: metadata key {key!r} is missing")
            return default
        try:
            value = field.contents()
        except (ValueError, UnicodeDecodeError, IndexError) as e:
            raise GGUFFormatError(f"{self.path}: metadata key {key!r} is unreadable ({e})") from None
        ok = {
            int: isinstance(value, (int, np.integer)) and not isinstance(value, bool),
            float: isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool),
            str: isinstance(value, str),
            bool: isinstance(value, (bool, np.bool_)),
            list: isinstance(value, list),
        }[kind]
        if not ok:
            raise GGUFFormatError(
                f"{self.path}: metadata key {key!r} is {type(value).__name__} {str(value)[:40]!r}, "
                f"expected {kind.__name__}"
            )
        if kind is float and field.types[0] == GGUFValueType.FLOAT32:
            # The shortest decimal that is this float32 (1e-05, not 9.999999747378752e-06), as the source config had.
            return float(str(np.float32(value)))
        return kind(value) if kind is not list else value

    def _arch_meta(self, suffix: str, kind: type, default=...):
        return self.meta(f"{self.arch}.{suffix}", kind, default)

    # -- config ----------------------------------------------------------------------------------
    def _config(self) -> ModelConfig:
        a = self.arch
        hidden = self._arch_meta("embedding_length", int)
        heads = self._arch_meta("attention.head_count", int)
        kv_heads = self._arch_meta("attention.head_count_kv", int, heads)
        if heads <= 0 or (hidden % heads and not self.has(f"{a}.attention.key_length")):
            raise GGUFFormatError(f"{self.path}: {a}.attention.head_count={heads} does not divide {hidden}")
        head_dim = self._arch_meta("attention.key_length", int, hidden // heads)
        value_dim = self._arch_meta("attention.value_length", int, head_dim)
        if value_dim != head_dim:
            raise GGUFFormatError(
                f"{self.path}: {a}.attention.value_length={value_dim} differs from key_length={head_dim} (unsupported)"
            )
        rope_dims = self._arch_meta("rope.dimension_count", int, head_dim)
        if rope_dims != head_dim:
            raise GGUFFormatError(
                f"{self.path}: {a}.rope.dimension_count={rope_dims} is not the head size {head_dim} "
                "(partial rotary embeddings are not supported)"
            )
        scaling = self._arch_meta("rope.scaling.type", str, "none")
        if scaling not in ("none", "") or "rope_freqs.weight" in self.tensors:
            what = f"{a}.rope.scaling.type={scaling!r}" if scaling not in ("none", "") else "tensor rope_freqs.weight"
            raise GGUFFormatError(f"{self.path}: {what}: scaled RoPE is not supported for GGUF import")
        tokens = self.meta("tokenizer.ggml.tokens", list, None)
        vocab = self._arch_meta("vocab_size", int, len(tokens) if tokens is not None else ...)
        eos = self.eos_token_ids()
        try:
            return ModelConfig(
                arch=a,
                vocab_size=vocab,
                hidden_size=hidden,
                intermediate_size=self._arch_meta("feed_forward_length", int),
                num_layers=self._arch_meta("block_count", int),
                num_heads=heads,
                num_kv_heads=kv_heads,
                head_dim=head_dim,
                rms_norm_eps=self._arch_meta("attention.layer_norm_rms_epsilon", float),
                rope_theta=self._arch_meta("rope.freq_base", float, 10000.0),
                max_position_embeddings=self._arch_meta("context_length", int, 32768),
                tie_word_embeddings="output.weight" not in self.tensors,
                qkv_bias=a == "qwen2" or "blk.0.attn_q.bias" in self.tensors,
                o_bias=a != "qwen2" and "blk.0.attn_output.bias" in self.tensors,
                qk_norm=a == "qwen3",
                bos_token_id=self.meta("tokenizer.ggml.bos_token_id", int, None),
                eos_token_id=(eos[0] if len(eos) == 1 else tuple(eos)) if eos else None,
                pad_token_id=self.meta("tokenizer.ggml.padding_token_id", int, None),
            )
        except ConfigError as e:
            raise GGUFFormatError(f"{self.path}: the metadata gives an unusable config ({e})") from None

    def eos_token_ids(self) -> list[int]:
        """Ids that end a generation: the file's EOS, its end-of-turn token, and `<|im_end|>` for ChatML."""
        ids = [self.meta(k, int, None) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
        template = self.meta("tokenizer.chat_template", str, "")
        tokens = self.meta("tokenizer.ggml.tokens", list, [])
        if "<|im_end|>" in template and "<|im_end|>" in tokens:
            ids.append(tokens.index("<|im_end|>"))
        out: list[int] = []
        for i in ids:
            if i is not None and i not in out:
                out.append(i)
        return out

    # -- tensors ---------------------------------------------------------------------------------
    def _hf_to_gguf_names(self) -> dict[str, str]:
        names = {hf: g for g, hf in _TOP_NAMES.items()}
        for i in range(self.config.num_layers):
            for g, hf in _LAYER_NAMES.items():
                names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{g}"
        return names

    def plan(self) -> list[_Planned]:
        """Every Hugging Face tensor of the model, in file order, each dequantized only when fetched."""
        cfg = self.config
        to_gguf = self._hf_to_gguf_names()
        expected = hf_tensor_names(cfg)
        wanted = {to_gguf[hf] for hf in expected}
        missing = [f"{to_gguf[hf]} (for {hf})" for hf in expected if to_gguf[hf] not in self.tensors]
        if missing:
            raise GGUFFormatError(
                f"{self.path}: missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''} "
                f"(a {cfg.arch} model of {cfg.num_layers} layers needs them)"
            )
        extra = sorted(set(self.tensors) - wanted)
        if extra:
            raise GGUFFormatError(
                f"{self.path}: unexpected tensors {extra[:6]}{' ...' if len(extra) > 6 else ''} for a {cfg.arch} model"
            )
        shapes = _hf_shapes(cfg)
        for hf in expected:
            self._check_tensor(to_gguf[hf], hf, shapes[hf])
        return [_Planned(to_gguf[hf], hf, shapes[hf], lambda hf=hf: self.hf_tensor(to_gguf[hf])) for hf in expected]

    def _check_tensor(self, gguf_name: str, hf_name: str, shape: tuple[int, ...]) -> None:
        from gguf import GGMLQuantizationType

        t = self.tensors[gguf_name]
        kind = GGMLQuantizationType(t.tensor_type).name
        if kind not in TENSOR_TYPES:
            raise GGUFFormatError(
                f"{self.path}: tensor {gguf_name!r} has type {kind}; supported: {', '.join(TENSOR_TYPES)}"
            )
        # GGUF lists dims fastest-first ([in, out]); numpy (and Hugging Face) order is [out, in].
        dims = tuple(int(d) for d in reversed(t.shape.tolist()))
        if dims != shape:
            raise GGUFFormatError(
                f"{self.path}: tensor {gguf_name!r} has shape {list(dims)}, expected {list(shape)} for {hf_name} "
                "from the metadata"
            )

    def hf_tensor(self, gguf_name: str) -> np.ndarray:
        """One tensor dequantized to float32 in Hugging Face layout (after `plan()` checked its type and shape)."""
        from gguf.quants import dequantize

        t = self.tensors[gguf_name]
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except (ValueError, NotImplementedError) as e:
            raise GGUFFormatError(f"{self.path}: tensor {gguf_name!r} cannot be dequantized ({e})") from None
        if self.arch == "llama" and gguf_name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = self.config.num_heads if ".attn_q." in gguf_name else self.config.num_kv_heads
            w = unpermute_qk_rows(w, heads)
        return w

    # -- tokenizer -------------------------------------------------------------------------------
    def tokenizer(self):
        """A `tokenizers.Tokenizer` equivalent to the file's vocabulary (byte-level BPE)."""
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

        model = self.meta("tokenizer.ggml.model", str)
        if model != "gpt2":
            raise GGUFFormatError(
                f"{self.path}: tokenizer.ggml.model={model!r} is not supported (only 'gpt2': byte-level BPE)"
            )
        pre = self.meta("tokenizer.ggml.pre", str, "default")
        if pre not in PRE_TOKENIZERS:
            raise GGUFFormatError(
                f"{self.path}: tokenizer.ggml.pre={pre!r} is not supported; supported: {sorted(PRE_TOKENIZERS)}"
            )
        tokens = self.meta("tokenizer.ggml.tokens", list)
        types = self.meta("tokenizer.ggml.token_type", list, [1] * len(tokens))
        merges = self.meta("tokenizer.ggml.merges", list)
        if len(types) != len(tokens):
            raise GGUFFormatError(
                f"{self.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
            )
        vocab = {tok: i for i, tok in enumerate(tokens)}
        pairs = []
        for n, m in enumerate(merges):
            parts = m.split(" ")
            if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab:
                raise GGUFFormatError(
                    f"{self.path}: tokenizer.ggml.merges[{n}]={m!r} is not a pair of vocabulary tokens"
                )
            pairs.append((parts[0], parts[1]))
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
        kind, regex = PRE_TOKENIZERS[pre]
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind != "split")
        if kind == "split":
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"), byte_level])
        elif kind == "digits_then_byte_level":
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            tok.pre_tokenizer = byte_level
        tok.decoder = decoders.ByteLevel()
        # Control tokens are special (never split, skipped by skip_special_tokens); user-defined ones such as
        # <think> are matched whole but decode as text.
        marked = list(zip(tokens, types))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in marked if k == _CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in marked if k == _USER_DEFINED])
        bos = self.config.bos_token_id
        if self.meta("tokenizer.ggml.add_bos_token", bool, False) and bos is not None:
            b = tokens[bos]
            tok.post_processor = processors.TemplateProcessing(
                single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, bos)]
            )
        else:
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return tok

    def tokenizer_config(self) -> dict:
        """tokenizer_config.json: special tokens and the chat template from the metadata."""
        tokens = self.meta("tokenizer.ggml.tokens", list)

        def token(key):
            i = self.meta(key, int, None)
            if i is None:
                return None
            if not 0 <= i < len(tokens):
                raise GGUFFormatError(f"{self.path}: metadata key {key!r}={i} is outside the {len(tokens)} tokens")
            return tokens[i]

        out = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token("tokenizer.ggml.bos_token_id"),
            "eos_token": token("tokenizer.ggml.eos_token_id"),
            "unk_token": token("tokenizer.ggml.unknown_token_id"),
            "pad_token": token("tokenizer.ggml.padding_token_id"),
            "add_bos_token": self.meta("tokenizer.ggml.add_bos_token", bool, False),
            "add_eos_token": self.meta("tokenizer.ggml.add_eos_token", bool, False),
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.config.max_position_embeddings,
        }
        template = self.meta("tokenizer.chat_template", str, None)
        if template is not None:
            out["chat_template"] = template
        return {k: v for k, v in out.items() if v is not None}


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face shape of every tensor name of `cfg`."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = {
        "input_layernorm.weight": (D,),
        "post_attention_layernorm.weight": (D,),
        "self_attn.q_proj.weight": (q, D),
        "self_attn.k_proj.weight": (kv, D),
        "self_attn.v_proj.weight": (kv, D),
        "self_attn.o_proj.weight": (D, q),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.bias": (D,),
        "self_attn.q_norm.weight": (cfg.head_dim,),
        "self_attn.k_norm.weight": (cfg.head_dim,),
        "mlp.gate_proj.weight": (F, D),
        "mlp.up_proj.weight": (F, D),
        "mlp.down_proj.weight": (D, F),
    }
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
    for i in range(cfg.num_layers):
        shapes |= {f"model.layers.{i}.{k}": v for k, v in per_layer.items()}
    return shapes


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)


def gguf_to_hf_dir(
    gguf: str | os.PathLike | GGUFFile,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    *,
    max_shard_bytes: int = 4 << 30,
    progress: bool = False,
) -> pathlib.Path:
    """Write a Hugging Face directory for a GGUF file: config.json, generation_config.json, model.safetensors
    (or shards + index above `max_shard_bytes`), tokenizer.json, tokenizer_config.json.

    Everything is checked (metadata, tensor names, shapes, types) before anything is written; the directory
    is built beside `out_dir` and moved into place at the end, so a failure leaves `out_dir` as it was.
    `gguf`: the file's path, or a `GGUFFile` already read (its header is not parsed again)."""
    from tqdm import tqdm

    src = gguf if isinstance(gguf, GGUFFile) else read_gguf(gguf)
    cfg = src.config.replace(param_dtype=dtype)
    np_dtype = np.dtype(dtype_of(dtype))
    plan = src.plan()
    tokenizer = src.tokenizer()
    tokenizer_config = src.tokenizer_config()
    shards: list[list[_Planned]] = [[]]
    size = 0
    for p in plan:
        nbytes = int(np.prod(p.shape)) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += nbytes

    out_dir = pathlib.Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as tmp:  # replaces out_dir only once everything is written
        bar = tqdm(total=len(plan), desc="gguf_to_hf", unit="tensor", disable=not progress)
        weight_map, total = {}, 0
        for k, shard in enumerate(shards, start=1):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            arrays = []
            for p in shard:
                arrays.append((p.hf_name, p.fetch().astype(np_dtype)))
                weight_map[p.hf_name] = fname
                total += arrays[-1][1].nbytes
                bar.update()
            write_file(tmp / fname, arrays)
            del arrays
        bar.close()
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        hf_config = hf_config_json(cfg)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config[k] is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    return out_dir
