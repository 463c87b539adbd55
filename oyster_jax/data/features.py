"""Record -> token arrays: the one place where chat rendering meets the tokenizer.

Both the SeqIO preprocessors (through ``tf.numpy_function``) and the numpy iterators call these
functions, so the two paths give identical tokens by construction.

- ``sft_segments(record, fmt, chain_style)``: the rendered conversation as ``[(text, trainable)]``.
  The last assistant turn gets its thinking from the record: ``chain_style="prose"`` uses the record's
  ``thinking`` and renders ``chain`` as prose only when ``thinking`` is absent; ``"tagged"`` renders
  ``chain`` as tagged lines when present (else uses ``thinking``); ``None`` uses ``thinking`` only.
- ``pref_texts(record, fmt, chain_style)``: ``(prompt, chosen_completion, rejected_completion)``; a
  ``chosen.chain`` / ``rejected.chain`` (optional extra field) is honoured by ``"tagged"`` the same way.
- ``tokenize_segments(vocab, segments_list)``: ``[(tokens int32 [n], loss_weights int32 [n])]``.
  With an ``HfTokenizerVocabulary`` the whole text is encoded once and each token's weight is 1 when its
  first character lies in a trainable segment (exactly the ids of ``encode(full_text)``); other
  vocabularies encode segment by segment (segments are cut at chat markers, which are single tokens
  in a matching vocabulary).
- ``truncate_pref(prompt, chosen, rejected, seq_len, max_prompt_len)``: the truncation policy
  (documented in ``oyster_jax.data.pipeline``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oyster_jax.core import chat

__all__ = ["sft_segments", "pref_texts", "eval_prompt_text", "tokenize_segments", "tokenize_texts", "truncate_pref"]


def _thinking(holder: dict, language: str, chain_style: str | None) -> str | None:
    thinking, chain = holder.get("thinking"), holder.get("chain")
    if chain_style == "tagged" and chain:
        return chat.render_chain(chain, "tagged", language)
    if thinking is not None:
        return thinking
    if chain_style == "prose" and chain:
        return chat.render_chain(chain, "prose", language)
    return None


def sft_segments(record: dict, fmt: str = "chatml", chain_style: str | None = "prose") -> list[tuple[str, bool]]:
    """``[(text, trainable)]`` for an SFT record (see module docstring for where the thinking comes from)."""
    messages = [dict(m) for m in record["messages"]]
    last = messages[-1]
    if last.get("thinking") is None:
        thinking = _thinking(record, record.get("language", "en"), chain_style)
        if thinking is not None:
            last["thinking"] = thinking
    if chat.get_format(fmt).generation_suffix:  # DeepSeek: every assistant turn carries a think block
        for m in messages:
            if m["role"] == "assistant" and m.get("thinking") is None:
                m["thinking"] = ""
    return chat.render_segments(messages, fmt)


def pref_texts(record: dict, fmt: str = "chatml", chain_style: str | None = "prose") -> tuple[str, str, str]:
    """``(prompt, chosen_completion, rejected_completion)`` for a preference record."""
    language = record.get("language", "en")
    prompt = chat.render_generation_prompt(record["prompt_messages"], fmt)
    completions = []
    for side in ("chosen", "rejected"):
        thinking = _thinking(record[side], language, chain_style)
        completions.append(
            chat.render_completion(thinking if thinking is not None else "", record[side]["response"], fmt)
        )
    return prompt, completions[0], completions[1]


def eval_prompt_text(prompt: str, fmt: str = "chatml") -> str:
    """The generation prompt for a single-turn evaluation prompt (Strata-Sword, constructive items)."""
    return chat.render_generation_prompt([{"role": "user", "content": prompt}], fmt)


def _is_hf(vocab) -> bool:
    return hasattr(vocab, "tokenizer") and hasattr(vocab.tokenizer, "encode_batch")


def tokenize_texts(vocab, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids (int32) of each text, ``vocab.encode`` semantics (batched for HF tokenizers)."""
    if _is_hf(vocab):
        return [np.asarray(ids, dtype=np.int32) for ids in vocab.encode_batch(texts)]
    return [np.asarray(vocab.encode(t), dtype=np.int32) for t in texts]


def tokenize_segments(
    vocab, segments_list: Sequence[Sequence[tuple[str, bool]]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokens and loss weights (int32, 1 = trainable) for each rendered conversation."""
    if not _is_hf(vocab):
        out = []
        for segments in segments_list:
            ids, weights = [], []
            for text, trainable in segments:
                piece = vocab.encode(text)
                ids.extend(piece)
                weights.extend([int(trainable)] * len(piece))
            out.append((np.asarray(ids, dtype=np.int32), np.asarray(weights, dtype=np.int32)))
        return out
    texts = ["".join(t for t, _ in segments) for segments in segments_list]
    encodings = vocab.tokenizer.encode_batch(texts, add_special_tokens=vocab.add_special_tokens)
    out = []
    for segments, enc in zip(segments_list, encodings):
        # Character ranges [start, end) of trainable segments.
        bounds, flags, pos = [], [], 0
        for text, trainable in segments:
            pos += len(text)
            bounds.append(pos)
            flags.append(int(trainable))
        ids = np.asarray(enc.ids, dtype=np.int32)
        starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=len(ids))
        segment_of_token = np.searchsorted(np.asarray(bounds), starts, side="right")
        segment_of_token = np.minimum(segment_of_token, len(bounds) - 1)
        weights = np.asarray(flags, dtype=np.int32)[segment_of_token]
        # Tokens a post-processor added (BOS/EOS with empty offsets) are never trained.
        if vocab.add_special_tokens:
            special = np.asarray(enc.special_tokens_mask, dtype=bool)
            empty = np.fromiter((o[0] == o[1] for o in enc.offsets), dtype=bool, count=len(ids))
            weights[special & empty] = 0
        out.append((ids, weights))
    return out


def truncate_pref(
    prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, seq_len: int, max_prompt_len: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``prompt + completion`` into ``seq_len`` for both completions (same prompt for both).

    1. Nothing changes when ``len(prompt) + max(len(chosen), len(rejected)) <= seq_len``.
    2. Otherwise the prompt is cut from the LEFT (the latest turns stay) to
       ``max(seq_len - longest_completion, min(len(prompt), max_prompt_len))`` tokens
       (``max_prompt_len`` defaults to ``seq_len // 2``),
    3. then each completion is cut from the RIGHT to ``seq_len - len(prompt)``.
    """
    if max_prompt_len is None:
        max_prompt_len = seq_len // 2
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= seq_len:
        return prompt, chosen, rejected
    keep_prompt = max(seq_len - longest, min(len(prompt), max_prompt_len))
    keep_prompt = min(keep_prompt, len(prompt), seq_len - 1)
    prompt = prompt[len(prompt) - keep_prompt :]
    budget = seq_len - len(prompt)
    return prompt, chosen[:budget], rejected[:budget]
