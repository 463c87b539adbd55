"""Host batches for the trainers: one iterator per stage, from its `train.stage.StageSpec`.

The data pipeline lays batches out itself (`oyster_jax.data.layouts`): SFT rows [B, T], preference pairs
[P, 2, T] (a pair never straddles a microbatch or a device shard), or one shared-prompt row per pair
[P, L] when `config.data.pref_shared_len` asks for it (its length checked here against the longest pair
of the whole data set). `SyntheticIterator` makes random batches of the same layouts
(config.synthetic_data, benchmarks). Every iterator has `.layout`, `get_state()` and `set_state()`.
"""

from __future__ import annotations

import functools
import json
import logging

import numpy as np

from oyster_jax import distributed
from oyster_jax.data import layouts
from oyster_jax.data.layouts import DataError

__all__ = ["DataError", "SyntheticIterator", "make_heldout_iterator", "make_train_iterator", "global_layout"]

log = logging.getLogger(__name__)


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


class SyntheticIterator:
    """Random token batches, a pure function of (seed, batch index): no input pipeline cost.

    Preference pairs: half the row is a prompt both completions share, the other half each completion.
    """

    def __init__(self, record_kind: str, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0, layout=None):
        self.record_kind, self.batch_size, self.seq_len = record_kind, batch_size, seq_len
        self.vocab_size, self.seed = vocab_size, seed
        if layout is None:
            sft = record_kind == "sft"
            layout = layouts.SFT(batch_size, seq_len) if sft else layouts.TwoRows(batch_size, seq_len)
        self.layout = layout
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        T = self.seq_len
        if self.record_kind == "sft":
            shape = (self.batch_size, T)
            tokens = rng.integers(0, self.vocab_size, shape, dtype=np.int32)
            weights = np.zeros(shape, np.int32)
            weights[..., T // 2 :] = 1  # the second half is the "completion"
            positions = np.broadcast_to(np.arange(T, dtype=np.int32), shape).copy()
            return {
                "tokens": tokens,
                "loss_weights": weights,
                "segment_ids": np.ones(shape, np.int32),
                "positions": positions,
            }
        tokens = rng.integers(0, self.vocab_size, (self.batch_size, 2, T), dtype=np.int32)
        half = T // 2
        return self.layout.build([(t[0, :half], t[0, half:], t[1, half:]) for t in tokens])

    def get_state(self):
        return {"synthetic_index": self.index, "seed": self.seed}

    def set_state(self, state) -> None:
        if "synthetic_index" not in state:
            raise DataError("checkpoint data state is not a synthetic-data state (config.synthetic_data changed?)")
        self.index = int(state["synthetic_index"])

    @property
    def num_examples(self) -> int:
        return 1 << 30


def _vocab(data_spec):
    if not data_spec.tokenizer:
        return None
    from oyster_jax import data

    return data.load_vocabulary(data_spec.tokenizer)


def make_train_iterator(spec, *, process_index: int = 0, process_count: int = 1):
    """The stage's training iterator (this process's share of the global batch), laid out for the step:
    every iterator has `.layout` (`oyster_jax.data.layouts`), `get_state()` and `set_state()`."""
    hp, d = spec.hparams, spec.data
    local = hp.batch_size // process_count
    if d.synthetic:
        if not hp.is_pref:
            return SyntheticIterator("sft", local, d.seq_len, spec.model.vocab_size, spec.seed + process_index)
        # Synthetic pairs: half the row prompt, two completions of the other half.
        longest = d.seq_len // 2 + 2 * (d.seq_len - d.seq_len // 2)
        shared = resolve_shared_len(d.shared_len, longest, d.seq_len, "synthetic")
        layout = layouts.SharedPrompt(local, shared) if shared else None
        return SyntheticIterator("pref", local, d.seq_len, spec.model.vocab_size, spec.seed + process_index, layout)
    from oyster_jax import data

    common = dict(
        seed=spec.seed,
        shard_index=process_index,
        shard_count=process_count,
        vocab=_vocab(d),
        chat_format=d.chat_format or None,
        chain_style=d.chain_style or "task",
    )
    source, key = spec.data_source, spec.data_key
    named = f"{key}={json.dumps(source) if isinstance(source, dict) else repr(source)}"
    if not hp.is_pref:
        try:
            it = data.make_sft_iterator(source, batch_size=local, seq_len=d.seq_len, **common)
        except (ValueError, FileNotFoundError) as e:
            raise DataError(f"{named}: {e}") from e
        _check_sft_size(it, named, d.seq_len, local)
    else:
        try:
            it = data.make_pref_iterator(
                source, batch_size=local, seq_len=d.seq_len, max_prompt_len=d.max_prompt_len or None, **common
            )
        except (ValueError, FileNotFoundError) as e:
            raise DataError(f"{named}: {e}") from e
        if it.num_examples < local:
            raise DataError(
                f"{named} has {it.num_examples} preference pairs, fewer than one batch "
                f"(config.pref.batch_size={hp.batch_size} pairs); lower the batch size or add data"
            )
        shared = _shared_len(d, it)
        if shared:
            it.set_layout(layouts.SharedPrompt(local, shared))
    _check_vocab(it, spec.model, named)
    return it


def mixture_report(spec, iterator) -> list[dict] | None:
    """The resolved mixture of the stage's iterator (rates, sizes, expected epochs over the stage's steps),
    or None for synthetic data."""
    describe = getattr(iterator, "describe_mixture", None)
    return describe(spec.hparams.num_steps) if describe is not None else None


def format_mixture(stage_name: str, report: list[dict]) -> str:
    """The start-up lines of a resolved mixture."""
    lines = [f"{stage_name}: data mixture ({len(report)} source{'s' * (len(report) != 1)}):"]
    for m in report:
        tokens = f", {m['tokens']:,} tokens" if m.get("tokens") is not None else ""
        epochs = f", ~{m['epochs']:.2f} epochs" if "epochs" in m else ""
        lines.append(f"  {m['rate']:6.1%}  {m['source']} [{m['split']}]: {m['examples']:,} examples{tokens}{epochs}")
    return "\n".join(lines)


def global_layout(spec, iterator):
    """The layout of one global batch (all processes' local batches stacked on the leading axis), whose
    `spec()` gives the step's abstract batch; the row length is the iterator's (it may come from the data)."""
    hp = spec.hparams
    if not hp.is_pref:
        return layouts.SFT(hp.batch_size, spec.data.seq_len)
    local = iterator.layout
    if isinstance(local, layouts.SharedPrompt):
        return layouts.SharedPrompt(hp.batch_size, local.row_len)
    return layouts.TwoRows(hp.batch_size, spec.data.seq_len, local.pad_id)


def abstract_layout(spec):
    """The global batch layout of `spec` without reading any data (ahead-of-time compilation): an automatic
    shared-prompt length (pref_shared_len=-1) takes the longest row it may pick."""
    hp, d = spec.hparams, spec.data
    if not hp.is_pref:
        return layouts.SFT(hp.batch_size, d.seq_len)
    shared = d.shared_len
    if shared == AUTO_SHARED_LEN:
        shared = (2 * d.seq_len - 1) // SHARED_LEN_MULTIPLE * SHARED_LEN_MULTIPLE
    return layouts.SharedPrompt(hp.batch_size, shared) if shared else layouts.TwoRows(hp.batch_size, d.seq_len)


def step_batch_spec(spec, layout) -> dict:
    """ShapeDtypeStructs of the batch the step takes: the layout's, plus precomputed reference log-probs."""
    batch = layout.spec()
    if spec.hparams.precomputed_reference:
        batch = layouts.with_reference_logps(batch, spec.hparams.batch_size)
    return batch


def _shared_len(d, it) -> int:
    if not d.shared_len:
        return 0
    local = int(it.shared_row_lengths().max(initial=0))
    longest = distributed.max_over_processes(local)  # one row length for the global batch
    shared = resolve_shared_len(d.shared_len, longest, d.seq_len, d.task)
    if d.shared_len == AUTO_SHARED_LEN:
        _log_auto_shared_len(str(d.task), longest, shared, d.seq_len)
    return shared


@functools.cache  # a notebook or test may make the same stage's iterator many times: say it once
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
            f"{task} has {size}, less than one batch of {rows} rows x {seq_len} tokens "
            f"(config.sft.batch_size, config.data.seq_len); lower them or add data"
        )


def _check_vocab(it, model_cfg, task):
    size = getattr(getattr(it, "vocab", None), "vocab_size", None)
    if size is not None and size > model_cfg.vocab_size:
        raise DataError(
            f"{task}: tokenizer has {size} ids but config.model.vocab_size={model_cfg.vocab_size}; "
            f"set config.data.tokenizer to the model's tokenizer"
        )


def make_heldout_iterator(spec, batch_size: int):
    """One ordered pass over the held-out preference pairs (`layouts.TwoRows` [P, 2, T]; the last batch
    padded with empty pairs)."""
    from oyster_jax import data

    d = spec.data
    return data.make_pref_iterator(
        d.heldout_task,
        vocab=_vocab(d),
        batch_size=batch_size,
        seq_len=d.heldout_seq_len,
        split=d.heldout_split,
        shuffle=False,
        repeat=False,
        shard_index=0,
        shard_count=1,
        max_prompt_len=d.max_prompt_len or None,
        chat_format=d.chat_format or None,
        chain_style=d.chain_style or "task",
    )
