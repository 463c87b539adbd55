"""Host batches for the trainers: the data pipeline's numpy iterators, adapted to the step's layout.

SFT batches pass through unchanged ([B, T]). Preference batches arrive as [2P, T] ([chosen; rejected]
rows) and are regrouped as [P, 2, T] so that a pair never straddles a microbatch or a device shard.
`SyntheticIterator` makes random batches of the same layout (config.synthetic_data, benchmarks).
Every iterator has `get_state()` / `set_state()` for an exact resume.
"""

from __future__ import annotations

import numpy as np


class DataError(ValueError):
    """The data cannot feed the configured run (the message names the task and the field)."""


def pairs_from_rows(batch: dict) -> dict:
    """Data-pipeline preference batch [2P, T] -> step layout [P, 2, T] with `completion_mask`."""
    out = {}
    for key, value in batch.items():
        rows = value.shape[0]
        grouped = value.reshape((2, rows // 2) + value.shape[1:]).swapaxes(0, 1)
        out["completion_mask" if key == "loss_weights" else key] = np.ascontiguousarray(grouped)
    return out


class PrefPairs:
    """Wraps a data-pipeline preference iterator, yielding [P, 2, T] batches."""

    def __init__(self, rows_iterator):
        self.rows = rows_iterator

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return pairs_from_rows(next(self.rows))

    def get_state(self):
        return self.rows.get_state()

    def set_state(self, state) -> None:
        self.rows.set_state(state)

    @property
    def num_examples(self) -> int:
        return self.rows.num_examples


class SyntheticIterator:
    """Random token batches, a pure function of (seed, batch index): no input pipeline cost."""

    def __init__(self, kind: str, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0):
        self.kind, self.batch_size, self.seq_len = kind, batch_size, seq_len
        self.vocab_size, self.seed = vocab_size, seed
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        T = self.seq_len
        lead = (self.batch_size,) if self.kind == "sft" else (self.batch_size, 2)
        tokens = rng.integers(0, self.vocab_size, lead + (T,), dtype=np.int32)
        positions = np.broadcast_to(np.arange(T, dtype=np.int32), lead + (T,)).copy()
        segment_ids = np.ones(lead + (T,), np.int32)
        weights = np.zeros(lead + (T,), np.int32)
        weights[..., T // 2 :] = 1  # the second half is the "completion"
        key = "loss_weights" if self.kind == "sft" else "completion_mask"
        return {"tokens": tokens, key: weights, "segment_ids": segment_ids, "positions": positions}

    def get_state(self):
        return {"synthetic_index": self.index, "seed": self.seed}

    def set_state(self, state) -> None:
        if "synthetic_index" not in state:
            raise DataError("checkpoint data state is not a synthetic-data state (config.synthetic_data changed?)")
        self.index = int(state["synthetic_index"])

    @property
    def num_examples(self) -> int:
        return 1 << 30


def _vocab(config):
    path = config.data.get("tokenizer", "")
    if not path:
        return None
    from oyster_jax import data

    return data.load_vocabulary(path)


def make_train_iterator(config, stage: str, model_cfg, *, process_index: int = 0, process_count: int = 1):
    """The stage's training iterator (this process's share of the global batch)."""
    s = config[stage]
    local = s.batch_size // process_count
    if config.synthetic_data:
        seq_len = config.data.seq_len if stage == "sft" else config.data.pref_seq_len
        return SyntheticIterator(stage, local, seq_len, model_cfg.vocab_size, config.seed + process_index)
    from oyster_jax import data

    vocab = _vocab(config)
    common = dict(
        seed=config.seed,
        shard_index=process_index,
        shard_count=process_count,
        vocab=vocab,
        chat_format=config.data.get("chat_format") or None,
    )
    if stage == "sft":
        task = config.data.sft_task
        try:
            it = data.make_sft_iterator(task, batch_size=local, seq_len=config.data.seq_len, **common)
        except ValueError as e:
            raise DataError(f"config.data.sft_task={task!r}: {e}") from e
        _check_sft_size(it, task, config.data.seq_len, local)
    else:
        task = config.data.pref_task
        try:
            rows = data.make_pref_iterator(
                task,
                batch_size=local,
                seq_len=config.data.pref_seq_len,
                max_prompt_len=config.data.max_prompt_len or None,
                **common,
            )
        except ValueError as e:
            raise DataError(f"config.data.pref_task={task!r}: {e}") from e
        if rows.num_examples < local:
            raise DataError(
                f"config.data.pref_task={task!r} has {rows.num_examples} preference pairs, fewer than one batch "
                f"(config.pref.batch_size={s.batch_size} pairs); lower the batch size or add data"
            )
        it = PrefPairs(rows)
    _check_vocab(it, model_cfg, task)
    return it


def _check_sft_size(it, task, seq_len, rows):
    """A dataset that cannot fill one batch without repeating itself is almost surely a mistake."""
    try:
        total = sum(int(np.minimum(src.lengths["tokens"], seq_len).sum()) for src in it.sources)
    except AttributeError:  # not the pipeline's iterator: fall back on the example count
        total = None
    if it.num_examples < rows or (total is not None and total < rows * seq_len):
        size = f"{it.num_examples} examples" + (f" ({total} tokens)" if total is not None else "")
        raise DataError(
            f"config.data.sft_task={task!r} has {size}, less than one batch of {rows} rows x {seq_len} tokens "
            f"(config.sft.batch_size, config.data.seq_len); lower them or add data"
        )


def _check_vocab(it, model_cfg, task):
    vocab = getattr(getattr(it, "rows", it), "vocab", None)
    size = getattr(vocab, "vocab_size", None)
    if size is not None and size > model_cfg.vocab_size:
        raise DataError(
            f"task {task!r}: tokenizer has {size} ids but config.model.vocab_size={model_cfg.vocab_size}; "
            f"set config.data.tokenizer to the model's tokenizer"
        )


def make_heldout_iterator(config, batch_size: int):
    """One ordered pass over the held-out preference pairs ([P, 2, T]; the last batch padded with empty pairs)."""
    from oyster_jax import data

    rows = data.make_pref_iterator(
        config.data.heldout_pref_task,
        vocab=_vocab(config),
        batch_size=batch_size,
        seq_len=config.data.pref_seq_len,
        split=config.data.heldout_split,
        shuffle=False,
        repeat=False,
        shard_index=0,
        shard_count=1,
        max_prompt_len=config.data.max_prompt_len or None,
        chat_format=config.data.get("chat_format") or None,
    )
    return PrefPairs(rows)
