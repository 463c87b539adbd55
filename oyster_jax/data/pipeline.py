"""Fast numpy iterators over SeqIO tasks/mixtures: packed SFT rows and [chosen; rejected] preference rows.

    it = make_sft_iterator("oyster_csa_sft_mix", batch_size=8, seq_len=512, seed=0)
    batch = next(it)            # dict of int32 numpy [B, T]: tokens, loss_weights, segment_ids, positions
    state = it.get_state()      # small JSON-able dict; save it beside the checkpoint
    it2 = make_sft_iterator("oyster_csa_sft_mix", batch_size=8, seq_len=512, seed=0)
    it2.set_state(state)        # it2 now yields exactly the batches `it` would have yielded

How it works: the records of each task are read once (validated), rendered with the chat format,
tokenized in one batched call and kept in memory as flat int32 arrays; batches are cut from them with
numpy. Everything is a pure function of ``(seed, shard_index, position)``, which is why the state is a
few integers and a restored iterator continues exactly.

Sources: a registered task or mixture name, a ``seqio.Task``/``seqio.Mixture``, a data spec (a JSONL /
parquet / arrow file, a ``save_to_disk`` directory, ``hf:PATH[:split]``; ``oyster_jax.data.formats``), a list of
those, or a mixture ``{source: rate}``. A data spec becomes a SeqIO task (``tasks.task_for_spec``) whose only
split is "train". Tasks over records (``tasks.RecordSource``) are tokenized by the task's own
``tasks.record_features`` (what its SeqIO preprocessor calls), with the chat format and chain style the task
was registered with (override with ``chat_format=`` / ``chain_style=``); other seqio tasks must output the
standard features (``targets`` and optionally ``inputs`` / ``targets_loss_weights`` for SFT;
``inputs``/``targets``/``rejected_targets`` for preference). ``vocab`` defaults to the task's vocabulary.
``it.mixture`` / ``it.describe_mixture(steps)``: the resolved sources, rates and sizes.

Order: each task's examples (this shard's share) are shuffled per epoch with a permutation seeded by
``(seed, shard_index, task index, epoch)``; with several tasks, the task of the d-th draw is sampled
with probability proportional to its rate (``rates={name: rate}`` overrides the mixture's rates).
``repeat=False`` walks every example once (tasks one after another) and then stops; the last batch is
padded with empty rows (``segment_ids == 0`` everywhere).

Sharding: process ``shard_index`` of ``shard_count`` (default ``jax.process_index()`` /
``jax.process_count()``) owns examples ``shard_index::shard_count`` of every task, so processes never
overlap and together cover each task once per epoch.

SFT rows (``make_sft_iterator``): examples are packed greedily in draw order; an example that does not
fit in the rest of a row starts the next row; an example longer than ``seq_len`` keeps its first
``seq_len`` tokens.
- ``tokens``: ids, ``vocab.pad_id`` in padding.
- ``loss_weights``: 1 where ``tokens[b, t]`` is an assistant token (thinking, answer, end-of-turn
  marker) — the token to be predicted from position t-1 (shift inside the loss).
- ``segment_ids``: 1, 2, ... per packed example in the row; 0 = padding. Attend only within equal ids.
- ``positions``: 0, 1, ... restarting at every segment (for RoPE); 0 in padding.

Preference pairs (``make_pref_iterator``): each pair's (prompt, chosen, rejected) tokens, truncated, laid
out by ``oyster_jax.data.layouts``: by default ``TwoRows`` [B, 2, T] (pair, chosen | rejected; same
prompt tokens in both rows), ``tokens`` = prompt + completion; ``completion_mask`` = 1 on completion
tokens, 0 on the prompt and padding; ``segment_ids`` = 1 on real tokens; ``positions`` = 0, 1, ... ;
``set_layout(layouts.SharedPrompt(B, L))`` gives one row per pair instead. Truncation policy when
``prompt + longest completion > seq_len``: cut the prompt from the left (keep the latest turns) down
to ``max(seq_len - longest_completion, min(len(prompt), max_prompt_len))`` tokens
(``max_prompt_len`` defaults to ``seq_len // 2``), then cut each completion from the right to fit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from oyster_jax.data import features, formats, layouts
from oyster_jax.data import tasks as tasks_lib
from oyster_jax.data.tf_setup import seqio
from oyster_jax.data.vocab import default_vocabulary, vocabulary_fingerprint

__all__ = [
    "make_sft_iterator",
    "make_pref_iterator",
    "SftIterator",
    "PrefIterator",
    "holdout_split",
    "StateMismatchError",
]

holdout_split = tasks_lib.holdout_split
_STATE_VERSION = 1
_MIX_BLOCK = 4096  # draws sampled per RNG block (the task choice of draw d depends only on seed, shard, d)


class StateMismatchError(ValueError):
    """``set_state`` got a state saved by an iterator over different data or shards."""


# ------------------------------------------------------------------------------------------------
# Tokenized examples, cached per process
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Examples:
    """Flat int32 arrays per field, with per-example starts/lengths (same for fields of one example)."""

    name: str
    fingerprint: str
    fields: dict[str, np.ndarray]
    starts: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    # (seq_len, max_prompt_len) -> shared-prompt row length per pair; the examples are cached per process,
    # so every iterator over them (training, held-out evaluation, tests) measures them once.
    shared_row_lengths: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(next(iter(self.lengths.values())))


def _flatten(name: str, fingerprint: str, columns: dict[str, list[np.ndarray]]) -> _Examples:
    fields, starts, lengths = {}, {}, {}
    for key, arrays in columns.items():
        lens = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        lengths[key] = lens
        starts[key] = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if len(lens) else lens
        fields[key] = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros([0], np.int32)
    return _Examples(name, fingerprint, fields, starts, lengths)


_CACHE: dict[tuple, _Examples] = {}
_CACHE_LIMIT = 16


def _vocab_fingerprint(vocab) -> str:

    return vocabulary_fingerprint(vocab)


def _columns(record_kind: str, task_columns: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Task features (``tasks.FEATURES`` names) -> the packer's fields: SFT ``tokens``/``loss_weights`` (inputs +
    targets, weights 0 on inputs), preference ``prompt``/``chosen``/``rejected``."""
    if record_kind == "sft":
        inputs, targets = task_columns.get("inputs"), task_columns["targets"]
        weights = task_columns.get("targets_loss_weights") or [np.ones(len(t), np.int32) for t in targets]
        if inputs is None:
            inputs = [np.zeros([0], np.int32) for _ in targets]
        return {
            "tokens": [np.concatenate([i, t]) for i, t in zip(inputs, targets, strict=True)],
            "loss_weights": [
                np.concatenate([np.zeros(len(i), np.int32), w]) for i, w in zip(inputs, weights, strict=True)
            ],
        }
    return {
        "prompt": task_columns["inputs"],
        "chosen": task_columns["targets"],
        "rejected": task_columns["rejected_targets"],
    }


def _load(record_kind, name, task, split, vocab, chat_format, chain_style, shard_index, shard_count) -> _Examples:
    """This shard's tokenized examples of one task, cached per process.

    A task over records (``tasks.RecordSource``: every built-in task and every file spec) is tokenized by
    the task's own feature function (``tasks.record_features``, the one its SeqIO preprocessor calls), in
    one batched call; any other SeqIO task is read through ``task.get_dataset``.
    """
    source = task.source
    records_source = isinstance(source, tasks_lib.RecordSource)
    content_fp = source.fingerprint(split) if records_source else f"seqio:{task.name}"
    key = (
        record_kind,
        name,
        content_fp,
        split,
        _vocab_fingerprint(vocab),
        chat_format,
        chain_style,
        shard_index,
        shard_count,
    )
    if key in _CACHE:
        return _CACHE[key]
    if records_source:
        if source.kind != record_kind:
            raise ValueError(f"task {name!r} holds {source.kind!r} records, not {record_kind!r}")
        records = source.records(split)[shard_index::shard_count]
        task_columns = tasks_lib.record_features(record_kind, records, vocab, chat_format, chain_style)
    else:
        task_columns = _from_seqio(record_kind, task, split, shard_index, shard_count)
    examples = _flatten(name, content_fp, _columns(record_kind, task_columns))
    if len(examples) == 0:
        raise ValueError(f"{name}: split {split!r} has no examples in shard {shard_index} of {shard_count}")
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = examples
    return examples


def _from_seqio(
    record_kind: str, task: seqio.Task, split: str, shard_index: int, shard_count: int
) -> dict[str, list[np.ndarray]]:
    """The standard task features of any SeqIO task: SFT ``targets`` (``inputs`` and ``targets_loss_weights``
    optional: weights default to 1 on every target token), preference ``inputs``/``targets``/``rejected_targets``."""
    required = {"sft": ("targets",), "pref": tasks_lib.FEATURES["pref"]}[record_kind]
    ds = task.get_dataset(
        sequence_length=None,
        split=split,
        shuffle=False,
        shard_info=seqio.ShardInfo(shard_index, shard_count),
        num_epochs=1,
    )
    missing = [f for f in required if f not in ds.element_spec]
    if missing:
        raise ValueError(f"task {task.name!r} does not output {missing} needed for {record_kind} batches")
    names = [f for f in tasks_lib.FEATURES[record_kind] if f in ds.element_spec]
    columns = {f: [] for f in names}
    for ex in ds.as_numpy_iterator():
        for f in names:
            columns[f].append(np.asarray(ex[f], dtype=np.int32))
    return columns


@dataclasses.dataclass(frozen=True)
class _Source:
    """One source of a mixture: the name shown and saved, its task, its rate, the split it reads (a file spec
    has only "train"; None: the iterator's split)."""

    name: str
    task: seqio.Task
    rate: float
    split: str | None = None


def _resolve(source, rates: Mapping[str, float] | None, record_kind: str) -> list[_Source]:
    """The sources of a name / Task / Mixture / data spec, a list of those, or a mixture ``{spec: rate}``.

    A registered mixture inside a ``{spec: rate}`` mixture shares its rate among its tasks by their rates."""
    items: list[_Source] = []

    def add(obj, rate):
        if isinstance(obj, seqio.Mixture):
            total = sum(float(obj.get_rate(t)) for t in obj.tasks) or 1.0
            for t in obj.tasks:
                items.append(_Source(t.name, t, float(obj.get_rate(t)) * rate / total))
        elif isinstance(obj, seqio.Task):
            items.append(_Source(obj.name, obj, rate))
        elif isinstance(obj, str | os.PathLike):
            name = os.fspath(obj)
            if name in seqio.MixtureRegistry.names():
                add(seqio.get_mixture_or_task(name), rate)
            elif name in seqio.TaskRegistry.names():
                add(seqio.TaskRegistry.get(name), rate)
            elif formats.is_file_spec(name):
                items.append(_Source(name, tasks_lib.task_for_spec(name, record_kind), rate, split="train"))
            else:
                raise ValueError(
                    f"{name!r} is neither a registered seqio task/mixture nor an existing file or directory "
                    f"(a data spec is a path, a task name or hf:PATH[:split])"
                )
        else:
            raise TypeError(f"unsupported data source {obj!r}")

    if isinstance(source, Mapping):
        for obj, rate in source.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float):
                raise ValueError(f"mixture rate of {obj!r} must be a number, got {rate!r}")
            add(obj, float(rate))
    elif isinstance(source, list | tuple):
        for obj in source:
            add(obj, 1.0)
    else:
        add(source, 1.0)
    if rates:
        names = {s.name for s in items}
        unknown = set(rates) - names
        if unknown:
            raise ValueError(f"rates name unknown tasks {sorted(unknown)}; tasks are {sorted(names)}")
        items = [dataclasses.replace(s, rate=float(rates.get(s.name, s.rate))) for s in items]
    if any(s.rate < 0 for s in items) or sum(s.rate for s in items) <= 0:
        raise ValueError(f"mixing rates must be >= 0 with a positive sum, got {[(s.name, s.rate) for s in items]}")
    return items


def _default_shard(shard_index, shard_count) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # lazy: only when the caller does not say

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, shard_count), got {shard_index} of {shard_count}")
    return int(shard_index), int(shard_count)


# ------------------------------------------------------------------------------------------------
# The example stream: which example comes next, as a pure function of a few counters
# ------------------------------------------------------------------------------------------------


class _Stream:
    def __init__(
        self, sizes: Sequence[int], rates: Sequence[float], seed: int, shard_index: int, shuffle: bool, repeat: bool
    ):
        self.sizes = [int(n) for n in sizes]
        total = float(sum(rates))
        self.probs = np.asarray([r / total for r in rates], dtype=np.float64)
        self.seed, self.shard_index, self.shuffle, self.repeat = int(seed), int(shard_index), shuffle, repeat
        self.draws = 0
        self.consumed = [0] * len(self.sizes)
        self._block = (-1, None)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}

    def _choice(self, draw: int) -> int:
        if len(self.sizes) == 1:
            return 0
        block, offset = divmod(draw, _MIX_BLOCK)
        if self._block[0] != block:
            rng = np.random.default_rng([self.seed, self.shard_index, 0x5EED, block])
            self._block = (block, rng.choice(len(self.sizes), size=_MIX_BLOCK, p=self.probs))
        return int(self._block[1][offset])

    def _perm(self, k: int, epoch: int) -> np.ndarray:
        cached = self._perms.get(k)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, self.shard_index, k, epoch])
            cached = (epoch, rng.permutation(self.sizes[k]))
            self._perms[k] = cached
        return cached[1]

    def peek(self) -> tuple[int, int] | None:
        """(task index, example index) of the next example, or None when a single pass is over."""
        if self.repeat:
            k = self._choice(self.draws)
        else:
            k = next((i for i, n in enumerate(self.sizes) if self.consumed[i] < n), None)
            if k is None:
                return None
        epoch, i = divmod(self.consumed[k], self.sizes[k])
        return k, int(self._perm(k, epoch)[i]) if self.shuffle else i

    def advance(self, k: int):
        self.draws += 1
        self.consumed[k] += 1


# ------------------------------------------------------------------------------------------------
# Iterators
# ------------------------------------------------------------------------------------------------


_BATCH_KEYS = ("tokens", "loss_weights", "segment_ids", "positions")


class _BaseIterator:
    record_kind = ""

    def __init__(self, sources, vocab, batch_size, seq_len, seed, shard_index, shard_count, shuffle, repeat, config):
        if batch_size < 1 or seq_len < 2:
            raise ValueError(f"batch_size must be >= 1 and seq_len >= 2, got {batch_size}, {seq_len}")
        self.sources: list[_Examples] = [s for s, _ in sources]
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.pad_id = int(vocab.pad_id)
        self.vocab = vocab
        self._stream = _Stream(
            [len(s) for s in self.sources], [r for _, r in sources], seed, shard_index, shuffle, repeat
        )
        self._config = config
        self._arange = np.arange(self.seq_len, dtype=np.int32)

    def __iter__(self):
        return self

    def _empty_batch(self, rows: int) -> dict[str, np.ndarray]:
        """All-padding int32 [rows, seq_len] arrays, one per name in `_BATCH_KEYS`."""
        shape = (rows, self.seq_len)
        batch = {k: np.zeros(shape, dtype=np.int32) for k in _BATCH_KEYS}
        batch["tokens"][:] = self.pad_id
        return batch

    @property
    def num_examples(self) -> int:
        """Examples of this shard (all tasks), i.e. one epoch."""
        return sum(len(s) for s in self.sources)

    @property
    def examples_consumed(self) -> int:
        return self._stream.draws

    def get_state(self) -> dict:
        """Position as a small JSON-able dict (``json.dumps`` works on it)."""
        return {
            "version": _STATE_VERSION,
            "kind": self.record_kind,  # the key name is part of saved checkpoints
            "draws": self._stream.draws,
            "consumed": list(self._stream.consumed),
            "config": self._config,
            "mixture": getattr(self, "mixture", None),  # for people reading a checkpoint; not compared
        }

    def set_state(self, state: Mapping) -> None:
        """Continue from ``state`` (from ``get_state`` of an iterator over the same data and shard)."""
        if isinstance(state, str | bytes):
            state = json.loads(state)
        if state.get("version") != _STATE_VERSION or state.get("kind") != self.record_kind:
            raise StateMismatchError(
                f"state is version {state.get('version')} of kind {state.get('kind')!r}; "
                f"this iterator needs version {_STATE_VERSION} of kind {self.record_kind!r}"
            )
        saved = state.get("config", {})
        diffs = [k for k in sorted(set(saved) | set(self._config)) if saved.get(k) != self._config.get(k)]
        if diffs:
            detail = "; ".join(f"{k}: saved {saved.get(k)!r} vs now {self._config.get(k)!r}" for k in diffs)
            raise StateMismatchError(f"iterator state does not match this iterator ({detail})")
        consumed = [int(c) for c in state["consumed"]]
        if len(consumed) != len(self.sources):
            raise StateMismatchError(f"state has {len(consumed)} task counters, iterator has {len(self.sources)} tasks")
        self._stream.draws = int(state["draws"])
        self._stream.consumed = consumed

    def describe_mixture(self, steps: int | None = None) -> list[dict]:
        """The resolved mixture, one dict per source: ``source``, ``task``, ``split``, ``rate`` (share of
        draws), ``examples`` (this shard's), ``tokens`` (SFT) and, given the run's ``steps``, ``epochs``: the
        passes over the source that ``steps`` batches are expected to make (SFT: rows x seq_len / the
        mixture's mean example length, capped at seq_len; packing waste ignored, so an upper bound)."""
        out = [dict(m) for m in self.mixture]
        if steps is not None:
            if self.record_kind == "sft":
                mean_len = sum(
                    m["rate"] * float(np.minimum(src.lengths["tokens"], self.seq_len).mean())
                    for m, src in zip(out, self.sources, strict=True)
                )
                per_batch = self.batch_size * self.seq_len / max(mean_len, 1.0)
            else:
                per_batch = self.batch_size
            for m in out:
                m["epochs"] = steps * per_batch * m["rate"] / m["examples"]
        return out

    # Orbax / PyTorch-style aliases.
    state_dict = get_state
    load_state_dict = set_state


class SftIterator(_BaseIterator):
    """Packed SFT batches; see the module docstring for the layout."""

    record_kind = "sft"

    def __next__(self) -> dict[str, np.ndarray]:
        B, T = self.batch_size, self.seq_len
        batch = self._empty_batch(B)
        tokens, loss_weights, segment_ids, positions = (batch[k] for k in _BATCH_KEYS)
        stream, placed = self._stream, 0
        for b in range(B):
            fill, segment = 0, 0
            while fill < T:
                nxt = stream.peek()
                if nxt is None:
                    break
                k, i = nxt
                ex = self.sources[k]
                length = min(int(ex.lengths["tokens"][i]), T)
                if fill + length > T:
                    break
                start = int(ex.starts["tokens"][i])
                end = fill + length
                tokens[b, fill:end] = ex.fields["tokens"][start : start + length]
                loss_weights[b, fill:end] = ex.fields["loss_weights"][start : start + length]
                segment += 1
                segment_ids[b, fill:end] = segment
                positions[b, fill:end] = self._arange[:length]
                fill = end
                stream.advance(k)
                placed += 1
            if stream.peek() is None:
                break
        if placed == 0:
            raise StopIteration
        return batch


class PrefIterator(_BaseIterator):
    """Preference batches in `layout` (two rows per pair by default); see the module docstring."""

    record_kind = "pref"

    def __init__(self, *args, max_prompt_len: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_prompt_len = max_prompt_len
        self.layout: layouts.PrefLayout = layouts.TwoRows(self.batch_size, self.seq_len, self.pad_id)

    def set_layout(self, layout: layouts.PrefLayout) -> None:
        """Lay the next batches out as `layout` (e.g. `layouts.SharedPrompt`, sized from
        `shared_row_lengths`); the data order and the iterator state do not depend on it."""
        if layout.pairs != self.batch_size:
            raise ValueError(f"layout for {layout.pairs} pairs, iterator yields {self.batch_size}")
        self.layout = layout

    def _pair(self, ex: _Examples, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example i of `ex` as (prompt, chosen, rejected) tokens, truncated to fit `seq_len`."""
        parts = [
            ex.fields[f][ex.starts[f][i] : ex.starts[f][i] + ex.lengths[f][i]] for f in ("prompt", "chosen", "rejected")
        ]
        return features.truncate_pref(*parts, self.seq_len, self.max_prompt_len)

    def shared_row_lengths(self) -> np.ndarray:
        """int64 [pairs of this shard]: the tokens each pair needs as one shared-prompt row (prompt + chosen +
        rejected after truncation), which sizes `config.data.pref_shared_len`."""
        key = (self.seq_len, self.max_prompt_len)
        for ex in self.sources:
            if key not in ex.shared_row_lengths:
                lengths = (sum(map(len, self._pair(ex, i))) for i in range(len(ex)))
                ex.shared_row_lengths[key] = np.fromiter(lengths, dtype=np.int64, count=len(ex))
        return np.concatenate([ex.shared_row_lengths[key] for ex in self.sources])

    def __next__(self) -> dict[str, np.ndarray]:
        triples, stream = [], self._stream
        while len(triples) < self.batch_size:
            nxt = stream.peek()
            if nxt is None:
                break
            k, i = nxt
            triples.append(self._pair(self.sources[k], i))
            stream.advance(k)
        if not triples:
            raise StopIteration
        return self.layout.build(triples)


def _task_vocab(resolved: list[_Source]):
    for s in resolved:
        feature = s.task.output_features.get("inputs") or s.task.output_features.get("targets")
        if feature is not None:
            return feature.vocabulary
    return default_vocabulary()


def _make(
    cls,
    source,
    vocab,
    *,
    batch_size,
    seq_len,
    seed,
    split,
    shard_index,
    shard_count,
    rates,
    chat_format,
    chain_style,
    shuffle,
    repeat,
    **extra,
):
    """The iterator ``cls`` over ``source``: the shared body of ``make_sft_iterator`` / ``make_pref_iterator``."""
    record_kind = cls.record_kind
    shard_index, shard_count = _default_shard(shard_index, shard_count)
    resolved = _resolve(source, rates, record_kind)
    # One vocabulary for all tasks: the caller's, else the first task's, else the bundled tiny one.
    vocab = vocab if vocab is not None else _task_vocab(resolved)
    loaded, names, mixture = [], [], []
    total_rate = sum(s.rate for s in resolved)
    for s in resolved:
        options = {"chat_format": "chatml", "chain_style": "prose"}
        try:
            options.update({k: v for k, v in tasks_lib.task_options(s.task.name).items() if k != "kind"})
        except KeyError:
            pass
        fmt = chat_format or options["chat_format"]
        style = options["chain_style"] if chain_style == "task" else chain_style
        task_split = s.split or split
        examples = _load(record_kind, s.name, s.task, task_split, vocab, fmt, style, shard_index, shard_count)
        loaded.append((examples, s.rate))
        names.append([s.name, examples.fingerprint, fmt, style, s.rate])
        lengths = examples.lengths["tokens" if record_kind == "sft" else "chosen"]
        mixture.append(
            {
                "source": s.name,
                "task": s.task.name,
                "split": task_split,
                "rate": s.rate / total_rate,
                "examples": len(examples),
                "tokens": int(lengths.sum()) if record_kind == "sft" else None,
            }
        )
    config = {
        "seed": int(seed),
        "split": split,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "shuffle": bool(shuffle),
        "repeat": bool(repeat),
        "vocab": _vocab_fingerprint(vocab),
        "tasks": names,
    }
    it = cls(loaded, vocab, batch_size, seq_len, seed, shard_index, shard_count, shuffle, repeat, config, **extra)
    it.mixture = mixture
    return it


def make_sft_iterator(
    source,
    vocab=None,
    *,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    split: str = "train",
    shard_index: int | None = None,
    shard_count: int | None = None,
    rates: Mapping[str, float] | None = None,
    chat_format: str | None = None,
    chain_style: str | None = "task",
    shuffle: bool = True,
    repeat: bool = True,
) -> SftIterator:
    """Packed SFT batches (int32 numpy [B, T]); see the module docstring.

    ``chat_format=None`` and ``chain_style="task"`` take the values the task was registered with.
    """
    return _make(
        SftIterator,
        source,
        vocab,
        batch_size=batch_size,
        seq_len=seq_len,
        seed=seed,
        split=split,
        shard_index=shard_index,
        shard_count=shard_count,
        rates=rates,
        chat_format=chat_format,
        chain_style=chain_style,
        shuffle=shuffle,
        repeat=repeat,
    )


def make_pref_iterator(
    source,
    vocab=None,
    *,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    split: str = "train",
    shard_index: int | None = None,
    shard_count: int | None = None,
    rates: Mapping[str, float] | None = None,
    chat_format: str | None = None,
    chain_style: str | None = "task",
    shuffle: bool = True,
    repeat: bool = True,
    max_prompt_len: int | None = None,
) -> PrefIterator:
    """Preference batches for ``batch_size`` pairs, int32 numpy [B, 2, T] (``layouts.TwoRows``; ``set_layout``
    changes it); see the module docstring."""
    return _make(
        PrefIterator,
        source,
        vocab,
        batch_size=batch_size,
        seq_len=seq_len,
        seed=seed,
        split=split,
        shard_index=shard_index,
        shard_count=shard_count,
        rates=rates,
        chat_format=chat_format,
        chain_style=chain_style,
        shuffle=shuffle,
        repeat=repeat,
        max_prompt_len=max_prompt_len,
    )
