"""SeqIO tasks and mixtures, registered on ``import oyster_jax.data.tasks``.

Built-in tasks (vocabulary: the bundled tiny tokenizer; chat format ChatML; chain style prose):

| name | kind | splits | source |
|---|---|---|---|
| ``oyster_csa_seed_sft`` | sft | train, test | ``oyster_jax/data/seed/sft_{split}.jsonl`` |
| ``oyster_csa_seed_pref`` | pref | train, test | ``seed/pref_{split}.jsonl`` (train: built on first use) |
| ``oyster_general_seed_sft`` | sft | train, test | benign general chat, ``seed/general_{split}.jsonl`` |
| ``oyster_seed_general`` | sft | train, test | the same general chat (the name mixture examples use) |
| ``oyster_constructive_seed`` | constructive | test | ``seed/constructive_items.jsonl`` (40 items) |
| ``strata_sword_{en,cn}_l{1,2,3}`` | eval | test | ``$OYSTER_DATA_DIR/strata_sword/{lang}_level_{n}.jsonl`` |

Mixture ``oyster_csa_sft_mix`` = constructive SFT (rate 0.85) + general chat (0.15); build another with
``register_sft_mixture(name, constructive_rate=..., general_rate=...)`` or pass ``rates=`` to
``pipeline.make_sft_iterator``. The Strata-Sword tasks are always registered; their files are looked
up when read by ``oyster_jax.data.strata_sword`` (the loader the harness and the TFDS builder use too),
and missing data gives an error that says how to import it.

Users register their own JSONL files with
``register_jsonl_task(name, path, kind, vocabulary=None, chat_format="chatml", chain_style="prose",
holdout_fraction=0.0)``: ``path`` is one file (split "train"; plus "validation" when
``holdout_fraction > 0``, chosen by a stable hash of the id) or a dict ``{split: path}``.

Records are read by ``oyster_jax.data.formats`` (JSONL, parquet, arrow, ``save_to_disk`` directories, TRL and
chat formats normalized) and validated (``schemas.RecordError`` names file:line / row and field). Task output
features (tf.data, ``task.get_dataset(...)``), standard SeqIO names (docs/data.md):

- sft: ``inputs`` (up to the first trained token), ``targets``, ``targets_loss_weights`` (int32, 1 on
  assistant tokens incl. thinking), ``id``.
- pref: ``inputs`` (prompt), ``targets`` (chosen completion), ``rejected_targets`` (completions end with the
  end-of-turn marker), ``id``; ``metric_fns=[preference_accuracy]``.
- eval / constructive: ``inputs`` (the generation prompt), ``prompt_text``, ``id`` and the record's
  metadata fields as strings/ints.

SeqIO's ``DecoderFeatureConverter`` works on them; ``SftPackingConverter`` packs the sft features into
the trainer's ``tokens / loss_weights / segment_ids / positions`` with seqio's packer. ``record_features``
is the one record -> features function: the preprocessors call it per record, the numpy iterators in
``oyster_jax.data.pipeline`` (the fast path the trainers use) once for all records. ``task_for_spec``
registers a task over a user's data spec.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping

import numpy as np

from oyster_jax.core import chat, schemas
from oyster_jax.data import features, formats, seed, strata_sword
from oyster_jax.data.metrics import preference_accuracy
from oyster_jax.data.tf_setup import seqio, tf
from oyster_jax.data.vocab import default_vocabulary

__all__ = [
    "JsonlSource",
    "register_jsonl_task",
    "register_sft_mixture",
    "holdout_split",
    "SftPackingConverter",
    "STRATA_SWORD_TASKS",
    "task_options",
]

SEED_DIR = seed.SEED_DIR
STRATA_SWORD_TASKS = tuple(f"strata_sword_{lang}_l{level}" for lang in ("en", "cn") for level in (1, 2, 3))

# ------------------------------------------------------------------------------------------------
# Held-out split
# ------------------------------------------------------------------------------------------------


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def holdout_split(records, fraction: float, seed: int = 0) -> tuple[list, list]:
    """``(kept, held_out)``: a record is held out when a stable hash of ``f"{seed}:{id}"`` < fraction.

    Stable across runs, machines and file order; adding records never moves existing ones.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    kept, held = [], []
    for r in records:
        (held if _unit_hash(f"{seed}:{r['id']}") < fraction else kept).append(r)
    return kept, held


# ------------------------------------------------------------------------------------------------
# Data source
# ------------------------------------------------------------------------------------------------

PathLike = str | os.PathLike | Callable[[], str | os.PathLike]


class RecordSource(seqio.DataSource):
    """Validated records of one kind (sft/pref/eval/constructive), one data spec per split.

    ``split_paths`` maps split -> a data spec of ``oyster_jax.data.formats`` (a JSONL / parquet / arrow file,
    a ``save_to_disk`` directory, ``hf:PATH[:split]``), or a zero-argument callable returning one, resolved
    when read (how the Strata-Sword tasks find ``$OYSTER_DATA_DIR``). Records in TRL or chat formats are
    normalized to the project schema (``formats.normalize``). ``reader(path)`` replaces the format reader
    (the Strata-Sword tasks read through ``oyster_jax.data.strata_sword``, the one loader). With
    ``holdout_fraction > 0`` a single "train" spec also yields a "validation" split (see ``holdout_split``).
    ``records(split)`` gives the Python dicts (cached per content version); ``get_dataset`` gives a
    ``tf.data`` of ``{"id": str, "record": json str}``.
    """

    def __init__(
        self,
        split_paths: Mapping[str, PathLike],
        kind: str,
        holdout_fraction: float = 0.0,
        holdout_seed: int = 0,
        reader: Callable[[pathlib.Path], list[dict]] | None = None,
    ):
        if kind not in schemas.KINDS:
            raise ValueError(f"unknown record kind {kind!r}: expected one of {schemas.KINDS}")
        self._split_paths = dict(split_paths)
        self._kind = kind
        self._reader = reader
        self._holdout = (float(holdout_fraction), int(holdout_seed))
        splits = list(self._split_paths)
        if holdout_fraction > 0:
            if splits != ["train"]:
                raise ValueError("holdout_fraction needs exactly one file, registered as split 'train'")
            splits.append("validation")
        self._cache: dict = {}
        super().__init__(splits=splits)

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def spec(self, split: str) -> str:
        """The data spec behind ``split`` (callables resolved)."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}: this source has {list(self.splits)}")
        p = self._split_paths["train" if split == "validation" else split]
        return os.fspath(p() if callable(p) else p)

    def path(self, split: str) -> pathlib.Path:
        return formats.parse_spec(self.spec(split))[1]

    def list_shards(self, split: str) -> list[str]:
        return [self.spec(split)]

    def _read(self, split: str) -> tuple[str, list[dict]]:
        spec = self.spec(split)
        reader, path, _ = formats.parse_spec(spec)
        if not path.exists() or (reader == "jsonl" and not path.is_file()):
            raise FileNotFoundError(f"{path}: no such file (split {split!r} of a {self._kind} source)")
        key = formats.spec_fingerprint(spec)
        if self._cache.get("key") != key:
            records = self._reader(path) if self._reader else formats.read_records(spec, self._kind)
            self._cache = {"key": key, "records": records}
        return key, self._cache["records"]

    def records(self, split: str) -> list[dict]:
        """Validated records of a split, in file order (re-read when the content changes)."""
        _, records = self._read(split)
        fraction, seed = self._holdout
        if fraction > 0:
            kept, held = holdout_split(records, fraction, seed)
            records = held if split == "validation" else kept
        return records

    def fingerprint(self, split: str) -> str:
        """Identity of the split's content (file + holdout) for caches and iterator states."""
        key, _ = self._read(split)
        return hashlib.sha256(repr((key, self._holdout, split)).encode()).hexdigest()[:16]

    def num_input_examples(self, split: str) -> int:
        return len(self.records(split))

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs
        records = self.records(split)
        if shard_info is not None:
            records = records[shard_info.index :: shard_info.num_shards]
        ids = [r["id"] for r in records]
        blobs = [json.dumps(r, ensure_ascii=False) for r in records]
        ds = tf.data.Dataset.from_tensor_slices(
            {
                "id": tf.constant(ids, dtype=tf.string, shape=[len(ids)]),
                "record": tf.constant(blobs, dtype=tf.string, shape=[len(blobs)]),
            }
        )
        if shuffle:
            ds = ds.shuffle(max(1, len(records)), seed=seed, reshuffle_each_iteration=True)
        return ds

    def __repr__(self):
        return f"RecordSource(kind={self._kind!r}, splits={list(self.splits)}, specs={self._split_paths})"


JsonlSource = RecordSource  # the name before other formats were read


# ------------------------------------------------------------------------------------------------
# Records -> task features: ONE batched function per kind, called by the SeqIO preprocessor (one record
# at a time, through tf.numpy_function) and by the numpy iterators (all records at once)
# ------------------------------------------------------------------------------------------------

FEATURES = {
    "sft": ("inputs", "targets", "targets_loss_weights"),
    "pref": ("inputs", "targets", "rejected_targets"),
    "eval": ("inputs",),
    "constructive": ("inputs",),
}


def record_features(
    kind: str, records: list[dict], vocab, chat_format: str = "chatml", chain_style: str | None = "prose"
) -> dict[str, list[np.ndarray]]:
    """``{feature: [int32 array per record]}`` with the task feature names of ``kind`` (``FEATURES``).

    sft: ``inputs`` = the conversation up to its first trainable token (system/user turns, the assistant
    opening marker), ``targets`` = the rest, ``targets_loss_weights`` = 1 on the assistant tokens of
    ``targets`` (thinking, answer, end-of-turn marker), 0 on later user turns of a multi-turn record.
    pref: ``inputs`` = the generation prompt, ``targets`` = the chosen completion, ``rejected_targets`` = the
    rejected one (completions end with the end-of-turn marker). eval / constructive: ``inputs`` = the
    generation prompt.
    """
    if kind == "sft":
        segments = [features.sft_segments(r, chat_format, chain_style) for r in records]
        out = {name: [] for name in FEATURES["sft"]}
        for ids, weights in features.tokenize_segments(vocab, segments):
            cut = int(np.argmax(weights)) if weights.any() else len(ids)
            out["inputs"].append(ids[:cut])
            out["targets"].append(ids[cut:])
            out["targets_loss_weights"].append(weights[cut:])
        return out
    if kind == "pref":
        texts = [features.pref_texts(r, chat_format, chain_style) for r in records]
        flat = features.tokenize_texts(vocab, [t for triple in texts for t in triple])
        return {"inputs": flat[0::3], "targets": flat[1::3], "rejected_targets": flat[2::3]}
    text_key = _EVAL_TEXT[kind]
    prompts = [features.eval_prompt_text(r[text_key], chat_format) for r in records]
    return {"inputs": features.tokenize_texts(vocab, prompts)}


def _map_records(dataset: tf.data.Dataset, tokenize, names: tuple[str, ...]) -> tf.data.Dataset:
    """``{id, *names}`` examples: ``tokenize(record)`` returns one int32 array per name for each JSON record."""

    def py_fn(blob: bytes):
        return tuple(tokenize(json.loads(blob.decode("utf-8"))))

    def fn(ex):
        arrays = tf.numpy_function(py_fn, [ex["record"]], (tf.int32,) * len(names), stateful=False)
        for t in arrays:
            t.set_shape([None])
        return {"id": ex["id"], **dict(zip(names, arrays, strict=True))}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_records(
    dataset: tf.data.Dataset, output_features, kind: str, chat_format: str, chain_style: str | None
) -> tf.data.Dataset:
    """The SeqIO preprocessor of sft / pref tasks: ``record_features`` on each record."""
    vocab = _feature_vocab(output_features, "inputs")
    names = FEATURES[kind]

    def tokenize(record: dict):
        columns = record_features(kind, [record], vocab, chat_format, chain_style)
        return [columns[n][0] for n in names]

    return _map_records(dataset, tokenize, names)


def _feature_vocab(output_features, name: str):
    return output_features[name].vocabulary


_EVAL_META = {
    "eval": ("language", "level", "attack_method", "prompt"),
    "constructive": ("profile", "task", "category", "risk_level", "query"),
}
_EVAL_TEXT = {"eval": "prompt", "constructive": "query"}


def tokenize_eval(dataset: tf.data.Dataset, output_features, chat_format: str, kind: str) -> tf.data.Dataset:
    """The SeqIO preprocessor of eval / constructive tasks: ``inputs`` (``record_features``), ``prompt_text``
    and the record's metadata fields."""
    vocab = _feature_vocab(output_features, "inputs")
    meta = _EVAL_META[kind]

    def py_fn(blob: bytes):
        record = json.loads(blob.decode("utf-8"))
        text = features.eval_prompt_text(record[_EVAL_TEXT[kind]], chat_format)
        [ids] = record_features(kind, [record], vocab, chat_format)["inputs"]
        return (ids, text.encode("utf-8"), *[str(record[k]).encode("utf-8") for k in meta])

    def fn(ex):
        out = tf.numpy_function(py_fn, [ex["record"]], (tf.int32, tf.string, *([tf.string] * len(meta))))
        out[0].set_shape([None])
        out[1].set_shape([])
        result = {"id": ex["id"], "inputs": out[0], "prompt_text": out[1]}
        for k, t in zip(meta, out[2:]):
            t.set_shape([])
            result[k] = tf.strings.to_number(t, tf.int32) if k == "level" else t
        return result

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------

_LOSS_WEIGHT_VOCAB = seqio.PassThroughVocabulary(size=2)
_TASK_OPTIONS: dict[str, dict] = {}


def task_options(name: str) -> dict:
    """``{kind, chat_format, chain_style}`` a task was registered with (for the numpy iterators)."""
    if name not in _TASK_OPTIONS:
        raise KeyError(f"task {name!r} was not registered through oyster_jax.data.tasks")
    return dict(_TASK_OPTIONS[name])


def _output_features(kind: str, vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    out = {name: seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32) for name in FEATURES[kind]}
    if kind == "sft":
        out["targets_loss_weights"] = seqio.Feature(_LOSS_WEIGHT_VOCAB, add_eos=False, dtype=tf.int32, required=False)
    return out


def register_jsonl_task(
    name: str,
    path: PathLike | Mapping[str, PathLike],
    kind: str,
    vocabulary: seqio.Vocabulary | None = None,
    *,
    chat_format: str = "chatml",
    chain_style: str | None = "prose",
    holdout_fraction: float = 0.0,
    holdout_seed: int = 0,
    overwrite: bool = False,
    reader: Callable[[pathlib.Path], list[dict]] | None = None,
) -> seqio.Task:
    """Register a seqio Task over data spec(s) of ``kind`` in {"sft", "pref", "eval", "constructive"}.

    ``path`` is one data spec (split "train") or ``{split: spec}``; a spec is anything
    ``oyster_jax.data.formats`` reads (JSONL, parquet, arrow, a ``save_to_disk`` directory, ``hf:PATH[:split]``).
    ``vocabulary`` defaults to the bundled tiny tokenizer. Re-registering an existing name needs
    ``overwrite=True``. ``reader(path)`` replaces the format reader of the source (see ``RecordSource``).
    Preference tasks carry ``metric_fns=[preference_accuracy]``.
    """
    if kind not in schemas.KINDS:
        raise ValueError(f"unknown record kind {kind!r}: expected one of {schemas.KINDS}")
    if chain_style not in ("prose", "tagged", None):
        raise ValueError(f"chain_style must be 'prose', 'tagged' or None, got {chain_style!r}")

    chat.get_format(chat_format)
    split_paths = dict(path) if isinstance(path, Mapping) else {"train": path}
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            raise ValueError(f"task {name!r} is already registered (pass overwrite=True to replace it)")
        seqio.TaskRegistry.remove(name)
    vocabulary = vocabulary if vocabulary is not None else default_vocabulary()
    source = RecordSource(split_paths, kind, holdout_fraction, holdout_seed, reader)
    if kind in ("sft", "pref"):
        preprocessors = [
            functools.partial(tokenize_records, kind=kind, chat_format=chat_format, chain_style=chain_style)
        ]
    else:
        preprocessors = [functools.partial(tokenize_eval, chat_format=chat_format, kind=kind)]
    task = seqio.TaskRegistry.add(
        name,
        source=source,
        output_features=_output_features(kind, vocabulary),
        preprocessors=preprocessors,
        metric_fns=[preference_accuracy] if kind == "pref" else None,
    )
    _TASK_OPTIONS[name] = {"kind": kind, "chat_format": chat_format, "chain_style": chain_style}
    return task


def task_for_spec(spec: str | os.PathLike, kind: str, vocabulary: seqio.Vocabulary | None = None) -> seqio.Task:
    """The SeqIO task over a data spec (a path or ``hf:PATH[:split]``; its data is split "train"), registered
    on first use as ``data_<kind>_<hash of the spec>``: a user's file goes through the same task definition
    (source, preprocessor) as the built-in tasks."""
    spec = os.fspath(spec)
    name = f"data_{kind}_{hashlib.sha256(spec.encode('utf-8')).hexdigest()[:12]}"
    if name in seqio.TaskRegistry.names():
        task = seqio.TaskRegistry.get(name)
        same_vocab = vocabulary is None or task.output_features["inputs"].vocabulary is vocabulary
        if same_vocab:
            return task
    return register_jsonl_task(name, {"train": spec}, kind, vocabulary, overwrite=True)


def register_sft_mixture(
    name: str,
    constructive_rate: float = 0.85,
    general_rate: float = 0.15,
    constructive_task: str = "oyster_csa_seed_sft",
    general_task: str = "oyster_general_seed_sft",
    overwrite: bool = False,
) -> seqio.Mixture:
    """A two-task SFT mixture (rates are relative sampling weights)."""
    if name in seqio.MixtureRegistry.names():
        if not overwrite:
            raise ValueError(f"mixture {name!r} is already registered (pass overwrite=True to replace it)")
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, [(constructive_task, constructive_rate), (general_task, general_rate)])


def _strata_path(lang: str, level: int) -> Callable[[], pathlib.Path]:
    return functools.partial(strata_sword.file_path, lang, level)  # resolved when read: $OYSTER_DATA_DIR


def _strata_reader(lang: str, level: int) -> Callable[[pathlib.Path], list[dict]]:
    return lambda path: strata_sword.read_file(path, lang, level)


def _seed_files(stem: str) -> dict[str, Callable[[], pathlib.Path]]:
    # resolved when read: a seed file that is not shipped is rebuilt then (oyster_jax.data.seed.path)
    return {split: functools.partial(seed.path, f"{stem}_{split}") for split in ("train", "test")}


def _register_builtins():
    register_jsonl_task("oyster_csa_seed_sft", _seed_files("sft"), "sft", overwrite=True)
    register_jsonl_task("oyster_csa_seed_pref", _seed_files("pref"), "pref", overwrite=True)
    register_jsonl_task("oyster_general_seed_sft", _seed_files("general"), "sft", overwrite=True)
    # The name the mixture examples use (docs/data.md, README): the same general-chat task.
    register_jsonl_task("oyster_seed_general", _seed_files("general"), "sft", overwrite=True)
    register_jsonl_task(
        "oyster_constructive_seed", {"test": seed.path("constructive_items")}, "constructive", overwrite=True
    )
    for lang in ("en", "cn"):
        for level in (1, 2, 3):
            register_jsonl_task(
                f"strata_sword_{lang}_l{level}",
                {"test": _strata_path(lang, level)},
                "eval",
                overwrite=True,
                reader=_strata_reader(lang, level),
            )
    register_sft_mixture("oyster_csa_sft_mix", overwrite=True)


# ------------------------------------------------------------------------------------------------
# SeqIO feature converter (tf.data packing; the numpy iterators are the fast path)
# ------------------------------------------------------------------------------------------------


@tf.autograph.experimental.do_not_convert  # plain tensor ops; autograph's closure cache mixed up instances
def _concat_sft(ex, length: int):
    zeros = tf.zeros_like(ex["inputs"])
    return {
        "tokens": tf.concat([ex["inputs"], ex["targets"]], 0)[:length],
        # + 1: seqio's packer takes 0 for padding and would drop the zero weights of the inputs
        "loss_weights": tf.concat([zeros, ex["targets_loss_weights"]], 0)[:length] + 1,
    }


@tf.autograph.experimental.do_not_convert
def _packed_rows(ex):
    return {
        "tokens": ex["tokens"],
        "loss_weights": tf.maximum(ex["loss_weights"] - 1, 0),
        "segment_ids": ex["tokens_segment_ids"],
        "positions": ex["tokens_positions"],
    }


class SftPackingConverter(seqio.FeatureConverter):
    """sft task features -> the trainer's packed rows ``tokens, loss_weights, segment_ids, positions``.

    ``tokens`` = ``inputs + targets``, ``loss_weights`` = 0 on ``inputs`` and ``targets_loss_weights`` on
    ``targets`` (the same rows the numpy packer builds, with seqio's packing). Usage:
    ``seqio.get_dataset("oyster_csa_seed_sft", {"inputs": 512, "targets": 512, "targets_loss_weights": 512},
    SftPackingConverter(), dataset_split="train")``; the packed length is ``task_feature_lengths["targets"]``. A SeqIO
    ``DecoderFeatureConverter`` on the same task gives the standard prefix-LM features instead (its
    ``decoder_loss_weights`` cover every target token, later user turns of a multi-turn record included).
    """

    TASK_FEATURES = {
        "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "targets_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {"segment_ids": tf.int32, "positions": tf.int32}

    def __init__(self, pack: bool = True, **kwargs):
        if not pack:
            raise ValueError(
                "SftPackingConverter packs; for padded rows use oyster_jax.data.pipeline.make_sft_iterator"
            )
        super().__init__(pack=True, **kwargs)

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        length = task_feature_lengths["targets"]
        ds = ds.map(functools.partial(_concat_sft, length=length), num_parallel_calls=tf.data.AUTOTUNE)
        ds = self._pack_or_pad(ds, {"tokens": length, "loss_weights": length})
        return ds.map(_packed_rows, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        length = task_feature_lengths["targets"]
        return {k: length for k in (*self.MODEL_FEATURES, *self.PACKING_FEATURE_DTYPES)}


_register_builtins()
