"""Batch layouts: the one place where token sequences become the arrays a train step takes.

Every layout builds host batches (numpy) and gives their abstract shapes (`spec()`, for ahead-of-time
compilation and jit shardings) from the same numbers, so the two cannot drift apart.

    SFT            tokens, loss_weights, segment_ids, positions                              [B, T]
    TwoRows        tokens, completion_mask, segment_ids, positions                          [P, 2, T]
                   (pair, chosen | rejected); prompt + completion left-aligned, padding after
    SharedPrompt   tokens, segment_ids, positions, branch_ids                               [P, L]
                   chosen_weights, rejected_weights, chosen_all_weights, rejected_all_weights [P, L]
                   fork_index, fork_target, fork_weight, fork_all_weight                     [P]

A preference layout is built from (prompt, chosen, rejected) token arrays, one triple per pair; a batch
with fewer triples than `pairs` is padded with empty pairs (every array zero there, `tokens` = pad id).
`rows` x `row_len` is what one step runs: the token positions FLOPs and tokens/s are counted over.

SharedPrompt runs each pair as one row ``prompt | chosen | rejected``. Under causal attention the prompt's
hidden states are the same in the chosen and the rejected row, so it is computed once: the rejected tokens
keep the positions they would have after the prompt and attend to the prompt and themselves only
(`branch_ids`: 0 prompt, 1 chosen, 2 rejected). Target weights are per position t (predicting token t + 1,
as the two-row loss shifts them): `*_weights` over the completion, `*_all_weights` over every real token
(ORPO's NLL with `nll_on_prompt`). The rejected completion's first token is predicted from the prompt's
last position, which this row follows with the chosen completion: that one prediction is given per pair
(`fork_*`). Same log-probs as two rows, fewer tokens (with prompts half the row, 3/4 of two rows).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

Triple = tuple[np.ndarray, np.ndarray, np.ndarray]  # (prompt, chosen, rejected) int token ids

__all__ = ["DataError", "SFT", "SharedPrompt", "TwoRows", "Triple", "with_reference_logps"]


class DataError(ValueError):
    """The data cannot feed the configured run (the message names the task, the pair and the field)."""


def _spec(shapes: dict[str, tuple[tuple[int, ...], type]]) -> dict:
    return {k: jax.ShapeDtypeStruct(shape, np.dtype(dtype)) for k, (shape, dtype) in shapes.items()}


@dataclasses.dataclass(frozen=True)
class SFT:
    """Packed SFT rows [B, T] (built by the data pipeline's packer; this gives their shapes)."""

    rows: int
    row_len: int

    def shapes(self) -> dict[str, tuple[tuple[int, ...], type]]:
        keys = ("tokens", "loss_weights", "segment_ids", "positions")
        return {k: ((self.rows, self.row_len), np.int32) for k in keys}

    def spec(self) -> dict:
        return _spec(self.shapes())


@dataclasses.dataclass(frozen=True)
class TwoRows:
    """Chosen and rejected as two rows of `seq_len` per pair: [P, 2, T]."""

    pairs: int
    seq_len: int
    pad_id: int = 0

    @property
    def rows(self) -> int:
        return 2 * self.pairs

    @property
    def row_len(self) -> int:
        return self.seq_len

    def shapes(self) -> dict[str, tuple[tuple[int, ...], type]]:
        keys = ("tokens", "completion_mask", "segment_ids", "positions")
        return {k: ((self.pairs, 2, self.seq_len), np.int32) for k in keys}

    def spec(self) -> dict:
        return _spec(self.shapes())

    def build(self, triples: Sequence[Triple]) -> dict[str, np.ndarray]:
        P, T = self.pairs, self.seq_len
        if len(triples) > P:
            raise ValueError(f"{len(triples)} pairs for a batch of {P}")
        out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.shapes().items()}
        out["tokens"][:] = self.pad_id
        arange = np.arange(T, dtype=np.int32)
        for i, (prompt, chosen, rejected) in enumerate(triples):
            p = len(prompt)
            for j, completion in enumerate((chosen, rejected)):
                n = p + len(completion)
                if n > T:
                    raise DataError(f"pair {i}: prompt {p} + completion {len(completion)} tokens > seq_len {T}")
                out["tokens"][i, j, :p] = prompt
                out["tokens"][i, j, p:n] = completion
                out["completion_mask"][i, j, p:n] = 1
                out["segment_ids"][i, j, :n] = 1
                out["positions"][i, j, :n] = arange[:n]
        return out


@dataclasses.dataclass(frozen=True)
class SharedPrompt:
    """One row of `row_len` tokens per pair, prompt | chosen | rejected: [P, L] (see the module docstring)."""

    pairs: int
    row_len: int

    @property
    def rows(self) -> int:
        return self.pairs

    def shapes(self) -> dict[str, tuple[tuple[int, ...], type]]:
        P, L = self.pairs, self.row_len
        rows = ("tokens", "segment_ids", "positions", "branch_ids")
        weights = ("chosen_weights", "rejected_weights", "chosen_all_weights", "rejected_all_weights")
        return (
            {k: ((P, L), np.int32) for k in rows}
            | {k: ((P, L), np.float32) for k in weights}
            | {k: ((P,), np.int32) for k in ("fork_index", "fork_target")}
            | {k: ((P,), np.float32) for k in ("fork_weight", "fork_all_weight")}
        )

    def spec(self) -> dict:
        return _spec(self.shapes())

    def build(self, triples: Sequence[Triple]) -> dict[str, np.ndarray]:
        P, L = self.pairs, self.row_len
        if len(triples) > P:
            raise ValueError(f"{len(triples)} pairs for a batch of {P}")
        out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.shapes().items()}
        for i, (prompt, chosen, rejected) in enumerate(triples):
            lp, lc, lr = len(prompt), len(chosen), len(rejected)
            need = lp + lc + lr
            if need == 0:
                continue  # an empty pair stays all zeros
            if need > L:
                raise DataError(
                    f"pair {i}: prompt {lp} + chosen {lc} + rejected {lr} tokens = {need} > {L} "
                    f"(config.data.pref_shared_len); raise it or set it to 0 (no prompt sharing)"
                )
            n_chosen = lp + lc  # the chosen row: prompt + chosen, positions 0 .. n_chosen - 1
            out["tokens"][i, :lp] = prompt
            out["tokens"][i, lp:n_chosen] = chosen
            out["tokens"][i, n_chosen:need] = rejected
            out["positions"][i, :n_chosen] = np.arange(n_chosen)
            out["positions"][i, n_chosen:need] = np.arange(lp, lp + lr)  # as if it followed the prompt
            out["segment_ids"][i, :need] = 1
            out["branch_ids"][i, lp:n_chosen] = 1
            out["branch_ids"][i, n_chosen:need] = 2
            # Position t predicts token t + 1 of its own branch; the last token of each branch predicts nothing.
            if n_chosen > 1:
                out["chosen_weights"][i, max(lp - 1, 0) : n_chosen - 1] = 1
                out["chosen_all_weights"][i, : n_chosen - 1] = 1
            if lp > 1:
                out["rejected_all_weights"][i, : lp - 1] = 1  # the prompt, as part of the rejected row
            if lr > 1:
                out["rejected_weights"][i, n_chosen : need - 1] = 1
                out["rejected_all_weights"][i, n_chosen : need - 1] = 1
            if lp >= 1 and lr >= 1:  # the prediction across the fork: prompt's last position -> rejected[0]
                out["fork_index"][i] = lp - 1
                out["fork_target"][i] = rejected[0]
                out["fork_weight"][i] = 1
                out["fork_all_weight"][i] = 1
        return out


PrefLayout = TwoRows | SharedPrompt


def with_reference_logps(spec: dict, pairs: int) -> dict:
    """`spec` plus the precomputed reference log-probs `ref_logps` float32 [P, 2] (DPO / IPO)."""
    return dict(spec, ref_logps=jax.ShapeDtypeStruct((pairs, 2), np.dtype(np.float32)))
