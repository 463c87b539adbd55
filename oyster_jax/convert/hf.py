"""Hugging Face <-> oyster_jax parameters.

    cfg, params = from_hf(hf_dir)                         # config.json + *.safetensors (+ index)
    to_hf(cfg, params, out_dir, dtype="float32")          # config.json, generation_config.json,
                                                          # model-0000K-of-0000N.safetensors + index
Tensors stream one at a time (mmap in, one shard out). With `mesh`, each parameter goes straight to its
sharded placement, so no device ever holds a full replica and the host holds about one tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import jax
import numpy as np

from oyster_jax.convert.hf_tokenizer import write_tokenizer
from oyster_jax.convert.safetensors_io import CheckpointFormatError, open_checkpoint_dir, write_file
from oyster_jax.core.files import atomic_directory
from oyster_jax.models import lora
from oyster_jax.models.config import ModelConfig, dtype_of


@dataclasses.dataclass(frozen=True)
class _Tensor:
    hf_name: str
    path: tuple[str, ...]  # our path inside one layer's (or the top-level) param dict
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


def _identity(x):
    return x


def _layer_table(cfg: ModelConfig) -> list[_Tensor]:
    """HF tensors of one decoder layer (`{i}` stands for the index)."""
    D, F, N, K, H = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def proj_in(heads):  # HF [heads*H, D] <-> ours [D, heads, H]
        return (lambda w: w.T.reshape(D, heads, H)), (lambda w: w.reshape(D, heads * H).T), (heads * H, D)

    def bias(heads):  # HF [heads*H] <-> ours [heads, H]
        return (lambda b: b.reshape(heads, H)), (lambda b: b.reshape(heads * H)), (heads * H,)

    def t(shape):
        return (lambda w: w.T), (lambda w: w.T), shape

    p = "model.layers.{i}."
    rows = [
        (p + "input_layernorm.weight", ("input_layernorm", "scale"), (_identity, _identity, (D,))),
        (
            p + "post_attention_layernorm.weight",
            ("post_attention_layernorm", "scale"),
            (_identity, _identity, (D,)),
        ),
        (p + "self_attn.q_proj.weight", ("self_attn", "q_proj"), proj_in(N)),
        (p + "self_attn.k_proj.weight", ("self_attn", "k_proj"), proj_in(K)),
        (p + "self_attn.v_proj.weight", ("self_attn", "v_proj"), proj_in(K)),
        (
            p + "self_attn.o_proj.weight",  # HF [D, N*H] <-> ours [N, H, D]
            ("self_attn", "o_proj"),
            ((lambda w: w.T.reshape(N, H, D)), (lambda w: w.reshape(N * H, D).T), (D, N * H)),
        ),
        (p + "mlp.gate_proj.weight", ("mlp", "gate_proj"), t((F, D))),
        (p + "mlp.up_proj.weight", ("mlp", "up_proj"), t((F, D))),
        (p + "mlp.down_proj.weight", ("mlp", "down_proj"), t((D, F))),
    ]
    if cfg.qkv_bias:
        rows += [
            (p + "self_attn.q_proj.bias", ("self_attn", "q_bias"), bias(N)),
            (p + "self_attn.k_proj.bias", ("self_attn", "k_bias"), bias(K)),
            (p + "self_attn.v_proj.bias", ("self_attn", "v_bias"), bias(K)),
        ]
    if cfg.o_bias:
        rows.append((p + "self_attn.o_proj.bias", ("self_attn", "o_bias"), (_identity, _identity, (D,))))
    if cfg.qk_norm:
        rows += [
            (p + "self_attn.q_norm.weight", ("self_attn", "q_norm", "scale"), (_identity, _identity, (H,))),
            (p + "self_attn.k_norm.weight", ("self_attn", "k_norm", "scale"), (_identity, _identity, (H,))),
        ]
    return [_Tensor(name, path, a, b, shape) for name, path, (a, b, shape) in rows]


def _top_table(cfg: ModelConfig) -> list[_Tensor]:
    V, D = cfg.vocab_size, cfg.hidden_size
    rows = [
        _Tensor("model.embed_tokens.weight", ("embed_tokens",), _identity, _identity, (V, D)),
        _Tensor("model.norm.weight", ("norm", "scale"), _identity, _identity, (D,)),
    ]
    if not cfg.tie_word_embeddings:
        rows.append(_Tensor("lm_head.weight", ("lm_head",), lambda w: w.T, lambda w: w.T, (V, D)))
    return rows


def hf_tensor_names(cfg: ModelConfig) -> list[str]:
    """Every tensor name a Hugging Face checkpoint of `cfg` holds, in file order."""
    names = [t.hf_name for t in _top_table(cfg)[:1]]
    for i in range(cfg.num_layers):
        names += [t.hf_name.format(i=i) for t in _layer_table(cfg)]
    names += [t.hf_name for t in _top_table(cfg)[1:]]
    return names


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    path = pathlib.Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (a Hugging Face model directory needs config.json)")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{path}: unreadable JSON ({e})") from e


def from_hf(
    hf_dir: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    progress: bool = False,
    **config_overrides,
) -> tuple[ModelConfig, dict]:
    """Load a Hugging Face checkpoint. Returns (ModelConfig, params).

    Params are numpy arrays in `cfg.param_dtype`, or, with `mesh`, jax arrays placed shard by shard
    with the logical-axis `rules` (default: the `fsdp_tp` recipe). `config_overrides` set ModelConfig
    fields (e.g. `param_dtype="bfloat16"`, `scan_layers=True`, `attention_impl="pallas"`).
    """
    cfg = ModelConfig.from_hf_config(read_hf_config(hf_dir), **config_overrides)
    where = open_checkpoint_dir(hf_dir)
    expected = set(hf_tensor_names(cfg))
    found = set(where)
    if cfg.tie_word_embeddings and "lm_head.weight" in found:
        found.discard("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if extra:
            parts.append(f"unexpected tensors: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
        raise CheckpointFormatError(f"{hf_dir}: " + "; ".join(parts))

    pdt = np.dtype(dtype_of(cfg.param_dtype))
    place = _placer(cfg, mesh, rules)

    def load(name: str, shape: tuple[int, ...], convert) -> np.ndarray:
        f = where[name]
        if f.shape(name) != tuple(shape):
            raise CheckpointFormatError(
                f"{f.path}: tensor {name!r} has shape {list(f.shape(name))}, expected {list(shape)} for this config"
            )
        return np.asarray(convert(f.get(name)), dtype=pdt)

    params: dict = {}
    from tqdm import tqdm

    bar = tqdm(total=len(expected), desc="from_hf", unit="tensor", disable=not progress)
    for t in _top_table(cfg):
        _set(params, t.path, place(t.path, load(t.hf_name, t.hf_shape, t.to_ours)))
        bar.update()
    for t in _layer_table(cfg):
        if cfg.scan_layers:  # one stacked [L, ...] array per tensor kind
            first = load(t.hf_name.format(i=0), t.hf_shape, t.to_ours)
            stacked = np.empty((cfg.num_layers, *first.shape), pdt)
            stacked[0] = first
            for i in range(1, cfg.num_layers):
                stacked[i] = load(t.hf_name.format(i=i), t.hf_shape, t.to_ours)
            bar.update(cfg.num_layers)
            _set(params, ("layers", *t.path), place(("layers", *t.path), stacked))
        else:
            for i in range(cfg.num_layers):
                path = (f"layers_{i}", *t.path)
                _set(params, path, place(path, load(t.hf_name.format(i=i), t.hf_shape, t.to_ours)))
                bar.update()
    bar.close()
    return cfg, params


def _placer(cfg: ModelConfig, mesh, rules):
    if mesh is None:
        return lambda path, arr: arr
    from oyster_jax.models import param_shardings

    shardings = param_shardings(cfg, mesh, rules)
    return lambda path, arr: jax.device_put(arr, _get(shardings, path))


def _hf_tensors(cfg: ModelConfig, params: dict):
    """(hf_name, shape, materialize) for every tensor, in file order; `materialize` fetches one tensor."""
    out = []
    top = {t.hf_name: t for t in _top_table(cfg)}
    emb = top.pop("model.embed_tokens.weight")
    out.append((emb.hf_name, emb.hf_shape, lambda t=emb: t.to_hf(np.asarray(_get(params, t.path)))))
    for i in range(cfg.num_layers):
        for t in _layer_table(cfg):
            if cfg.scan_layers:
                fetch = lambda t=t, i=i: t.to_hf(np.asarray(_get(params, ("layers", *t.path))[i]))
            else:
                fetch = lambda t=t, i=i: t.to_hf(np.asarray(_get(params, (f"layers_{i}", *t.path))))
            out.append((t.hf_name.format(i=i), t.hf_shape, fetch))
    for t in top.values():
        out.append((t.hf_name, t.hf_shape, lambda t=t: t.to_hf(np.asarray(_get(params, t.path)))))
    return out


def hf_config_json(cfg: ModelConfig, dtype: str | None = None) -> dict:
    """The `config.json` every export writes, in transformers-5 names (what `save_pretrained` of
    transformers 5 writes): `dtype` (was torch_dtype) and `rope_parameters` (was rope_theta + rope_scaling)."""
    d = cfg.replace(param_dtype=dtype or cfg.param_dtype).to_hf_config()
    d["dtype"] = d.pop("torch_dtype")
    scaling = d.pop("rope_scaling", None) or {}
    d["rope_parameters"] = {"rope_type": "default", **scaling, "rope_theta": d.pop("rope_theta")}
    return d


def _resolve_tokenizer(cfg: ModelConfig, tokenizer) -> pathlib.Path | None:
    if tokenizer is False:
        return None
    if tokenizer is None or tokenizer is True:
        seed = pathlib.Path(__file__).resolve().parents[1] / "data" / "seed" / "tokenizer.json"
        size = len(json.loads(seed.read_text())["model"]["vocab"])
        if size != cfg.vocab_size:  # only the tiny models trained on the bundled tokenizer match it exactly
            raise ValueError(
                f"to_hf: the model's vocabulary has {cfg.vocab_size} ids, the bundled tokenizer {size}; pass "
                "tokenizer=PATH (the tokenizer.json the model was trained with) or tokenizer=False for weights only"
            )
        return seed
    path = pathlib.Path(tokenizer)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"to_hf: tokenizer {path} does not exist")
    return path


def to_hf(
    cfg: ModelConfig,
    params: dict,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    *,
    max_shard_bytes: int = 4 << 30,
    progress: bool = False,
    tokenizer: str | os.PathLike | bool | None = None,
    chat_format: str = "chatml",
) -> pathlib.Path:
    """Write a Hugging Face checkpoint directory. It is built in a temporary sibling directory and moved
    into place at the end, so a failure never leaves a half-written `out_dir` behind.

    `tokenizer`: the tokenizer.json (or a directory holding one) to ship with the weights, written with
    our chat template (`hf_tokenizer.write_tokenizer`); None takes the bundled seed tokenizer when its size is the
    model's vocabulary size and refuses otherwise; False writes weights only. BOS/EOS/PAD ids in config.json and
    generation_config.json are the tokenizer's (EOS: the chat format's end-of-turn token)."""
    out_dir = pathlib.Path(out_dir)
    if cfg.lora is not None:  # LoRA: the merged model (W + (alpha/r)·A·B); convert.to_peft writes the adapters
        cfg, params = lora.without_adapters(cfg), lora.merged_weights(cfg, params)
    tokenizer = _resolve_tokenizer(cfg, tokenizer)
    np_dtype = np.dtype(dtype_of(dtype))
    tensors = _hf_tensors(cfg, params)
    # Plan the shards from shapes alone, so file names know N before any data is fetched.
    shards: list[list] = [[]]
    size = 0
    for item in tensors:
        nbytes = int(np.prod(item[1])) * np_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    n = len(shards)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as tmp:  # replaces out_dir only once everything is written
        weight_map, total = {}, 0
        from tqdm import tqdm

        bar = tqdm(total=len(tensors), desc="to_hf", unit="tensor", disable=not progress)
        for k, shard in enumerate(shards, start=1):
            fname = f"model-{k:05d}-of-{n:05d}.safetensors"
            arrays = []
            for name, shape, fetch in shard:
                arr = np.asarray(fetch()).astype(np_dtype)
                if arr.shape != tuple(shape):
                    raise ValueError(f"to_hf: tensor {name!r} has shape {list(arr.shape)}, expected {list(shape)}")
                arrays.append((name, arr))
                weight_map[name] = fname
                total += arr.nbytes
                bar.update()
            write_file(tmp / fname, arrays)
            del arrays
        bar.close()
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
        hf_config = hf_config_json(cfg, dtype)
        if tokenizer is not None:
            ids = write_tokenizer(
                tmp,
                tokenizer,
                chat_format=chat_format,
                vocab_size=cfg.vocab_size,
                model_max_length=cfg.max_position_embeddings,
            )
            hf_config.update(ids)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_config[k] is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out_dir
