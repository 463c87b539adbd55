"""Host batches for the trainers: the data pipeline's numpy iterators, adapted to the step's layout.

SFT batches pass through unchanged ([B, T]). Preference batches arrive as [2P, T] ([chosen; rejected]
rows) and are regrouped as [P, 2, T] so that a pair never straddles a microbatch or a device shard.
`SyntheticIterator` makes random batches of the same layout (config.synthetic_data, benchmarks).
Every iterator has `get_state()` / `set_state()` for an exact resume.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from oyster_jax import distributed

log = logging.getLogger(__name__)


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


def shared_layout(pairs: int, shared_len: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """{key: (shape, dtype)} of a shared-prompt batch (`share_prompts`): per row [P, L] the tokens and target
    weights, per pair [P] where the rejected branch forks off the prompt and what it predicts there."""
    P, L = int(pairs), int(shared_len)
    rows = ("tokens", "segment_ids", "positions", "branch_ids")
    weights = ("chosen_weights", "rejected_weights", "chosen_all_weights", "rejected_all_weights")
    return (
        {k: ((P, L), np.int32) for k in rows}
        | {k: ((P, L), np.float32) for k in weights}
        | {k: ((P,), np.int32) for k in ("fork_index", "fork_target")}
        | {k: ((P,), np.float32) for k in ("fork_weight", "fork_all_weight")}
    )


def share_prompts(pairs: dict, shared_len: int) -> dict:
    """[P, 2, T] pairs -> one row per pair of `shared_len` tokens: prompt | chosen completion | rejected completion.

    The prompt's hidden states are the same in both rows of a pair (causal attention, same positions), so it
    is run once: the rejected tokens keep their original positions and attend to the prompt and themselves
    only (`branch_ids`: 0 prompt, 1 chosen, 2 rejected). Target weights are per position t (predicting token
    t + 1), as in `step.shifted_targets`: `*_weights` from the completion mask, `*_all_weights` for every
    real token (ORPO's NLL with `nll_on_prompt`). The rejected completion's first token is predicted from the
    prompt's last position, which in this layout is followed by the chosen completion: that one prediction is
    given per pair (`fork_index`, `fork_target`, `fork_weight`, `fork_all_weight`). Same log-probs, fewer
    tokens: with prompts half the row, a pair costs 3/4 of two rows.
    """
    tokens, mask, seg, pos = (pairs[k] for k in ("tokens", "completion_mask", "segment_ids", "positions"))
    P, _, T = tokens.shape
    L = int(shared_len)
    out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in shared_layout(P, L).items()}
    for i in range(P):
        n = [int(np.count_nonzero(seg[i, j])) for j in (0, 1)]  # real tokens lead each row, padding after
        if n == [0, 0]:
            continue  # an empty (padding) pair stays all zeros
        for j in (0, 1):
            if np.any(seg[i, j, : n[j]] != seg[i, j, 0]) or np.any(seg[i, j, n[j] :] != 0):
                raise DataError(f"pair {i}: a preference row must hold one left-aligned sequence to share its prompt")
        starts = [int(np.argmax(mask[i, j, : n[j]] > 0)) if mask[i, j, : n[j]].any() else n[j] for j in (0, 1)]
        lp = starts[0]
        if starts[1] != lp or not np.array_equal(tokens[i, 0, :lp], tokens[i, 1, :lp]):
            raise DataError(f"pair {i}: chosen and rejected prompts differ; they cannot share one prompt")
        lc, lr = n[0] - lp, n[1] - lp
        need = lp + lc + lr
        if need > L:
            raise DataError(
                f"pair {i}: prompt {lp} + chosen {lc} + rejected {lr} tokens = {need} > {L} "
                f"(config.data.pref_shared_len); raise it or set it to 0 (no prompt sharing)"
            )
        chosen, rejected = slice(0, lp + lc), slice(lp + lc, need)
        out["tokens"][i, chosen] = tokens[i, 0, : n[0]]
        out["tokens"][i, rejected] = tokens[i, 1, lp : n[1]]
        out["positions"][i, chosen] = pos[i, 0, : n[0]]
        out["positions"][i, rejected] = pos[i, 1, lp : n[1]]
        out["segment_ids"][i, :need] = 1
        out["branch_ids"][i, lp : lp + lc] = 1
        out["branch_ids"][i, rejected] = 2
        # Position t predicts token t + 1 of its own branch; the last token of each branch predicts nothing.
        if n[0] > 1:
            out["chosen_weights"][i, : n[0] - 1] = mask[i, 0, 1 : n[0]]
            out["chosen_all_weights"][i, : n[0] - 1] = 1
        if lp > 1:
            out["rejected_all_weights"][i, : lp - 1] = 1  # the prompt, as part of the rejected row
        if lr > 1:
            out["rejected_weights"][i, lp + lc : need - 1] = mask[i, 1, lp + 1 : n[1]]
            out["rejected_all_weights"][i, lp + lc : need - 1] = 1
        if lp >= 1 and lr >= 1:
            out["fork_index"][i] = lp - 1
            out["fork_target"][i] = tokens[i, 1, lp]
            out["fork_weight"][i] = mask[i, 1, lp]
            out["fork_all_weight"][i] = 1
    return out


AUTO_SHARED_LEN = -1  # config.data.pref_shared_len: size the shared row from the data
SHARED_LEN_MULTIPLE = 64  # an automatic row length is rounded up to this many tokens


def resolve_shared_len(requested: int, longest: int, seq_len: int, task: str) -> int:
    """The shared-prompt row length to run: `requested` (config.data.pref_shared_len) checked against the
    `longest` pair of the whole data set before any step, so a short setting fails at start-up, not at the
    batch that holds the long pair. AUTO_SHARED_LEN picks the longest pair rounded up to SHARED_LEN_MULTIPLE,
    or 0 (two rows of seq_len) when one row would not be shorter than two."""
    if requested == 0:
        return 0
    if requested == AUTO_SHARED_LEN:
        rounded = -(-max(longest, 1) // SHARED_LEN_MULTIPLE) * SHARED_LEN_MULTIPLE
        return rounded if rounded < 2 * seq_len else 0
    if requested < 0:
        raise DataError(f"config.data.pref_shared_len={requested}: use 0 (off), {AUTO_SHARED_LEN} (auto) or a length")
    if longest > requested:
        raise DataError(
            f"task {task!r}: its longest preference pair needs {longest} tokens as one shared-prompt row (prompt + "
            f"chosen + rejected), more than config.data.pref_shared_len={requested}; raise it, set "
            f"{AUTO_SHARED_LEN} (auto) or 0 (no prompt sharing)"
        )
    return int(requested)


class PrefPairs:
    """Wraps a data-pipeline preference iterator, yielding [P, 2, T] batches, or shared-prompt rows
    [P, shared_len] (`share_prompts`) when `shared_len` > 0."""

    def __init__(self, rows_iterator, shared_len: int = 0):
        self.rows = rows_iterator
        self.shared_len = int(shared_len)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        pairs = pairs_from_rows(next(self.rows))
        return share_prompts(pairs, self.shared_len) if self.shared_len else pairs

    def get_state(self):
        return self.rows.get_state()

    def set_state(self, state) -> None:
        self.rows.set_state(state)

    @property
    def num_examples(self) -> int:
        return self.rows.num_examples


class SyntheticIterator:
    """Random token batches, a pure function of (seed, batch index): no input pipeline cost."""

    def __init__(self, kind: str, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0, shared_len: int = 0):
        self.kind, self.batch_size, self.seq_len = kind, batch_size, seq_len
        self.vocab_size, self.seed, self.shared_len = vocab_size, seed, int(shared_len)
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
        batch = {"tokens": tokens, key: weights, "segment_ids": segment_ids, "positions": positions}
        if self.kind != "sft":
            tokens[:, 1, : T // 2] = tokens[:, 0, : T // 2]  # one prompt per pair
            if self.shared_len:
                return share_prompts(batch, self.shared_len)
        return batch

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
        shared = 0
        if stage != "sft":  # synthetic pairs: half the row prompt, two completions of the other half
            longest = seq_len // 2 + 2 * (seq_len - seq_len // 2)
            shared = resolve_shared_len(config.data.get("pref_shared_len", 0), longest, seq_len, "synthetic")
        return SyntheticIterator(stage, local, seq_len, model_cfg.vocab_size, config.seed + process_index, shared)
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
        it = PrefPairs(rows, _shared_len(config, rows, task))
    _check_vocab(it, model_cfg, task)
    return it


def _shared_len(config, rows, task) -> int:
    requested = int(config.data.get("pref_shared_len", 0))
    if not requested:
        return 0
    local = int(rows.shared_row_lengths().max(initial=0))
    longest = distributed.max_over_processes(local)  # one row length for the global batch
    shared = resolve_shared_len(requested, longest, rows.seq_len, task)
    if requested == AUTO_SHARED_LEN:
        _log_auto_shared_len(str(task), longest, shared, rows.seq_len)
    return shared


@functools.cache  # the trainer makes the stage's iterator twice (training, shape probe): say it once
def _log_auto_shared_len(task: str, longest: int, shared: int, seq_len: int) -> None:
    plan = f"one row of {shared} tokens per pair" if shared else f"two rows of {seq_len} (no saving)"
    log.info("config.data.pref_shared_len=auto (%s): longest pair needs %d tokens -> %s", task, longest, plan)


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
