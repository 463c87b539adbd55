"""Constrained decoding: token masks from a grammar engine (llguidance), applied to the logits in our loop.

    grammars = Grammars(tokenizer, vocab_size=cfg.vocab_size, eos_ids=[2])
    matcher = grammars.matcher(grammars.json_schema({"type": "object", ...}))
    bits = matcher.bitmask()            # [ceil(V / 32)] uint32; bit j of word w allows token 32 * w + j
    matcher.consume(token)              # after the token was sampled; matcher.done once EOS was taken

llguidance (the engine vLLM and SGLang use) compiles JSON schemas, regexes and Lark grammars lazily against
the tokenizer and answers each step's mask in tens of microseconds on the host; the mask travels to the
device as packed bits and `apply_bitmask` removes every forbidden token before sampling. Once a JSON value is
complete the only allowed token is an end-of-turn id, so a constrained row always stops cleanly.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import llguidance
import numpy as np

__all__ = ["GrammarError", "Grammars", "TokenMatcher", "apply_bitmask", "bitmask_words"]

# Compact JSON: flexible whitespace lets a weak model spend its whole budget on newlines.
_JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """A schema or grammar the engine cannot compile (the message says why)."""


def bitmask_words(vocab_size: int) -> int:
    return -(-vocab_size // 32)


def apply_bitmask(
    logits: jax.Array,  # [B, V] float32
    bits: jax.Array,  # [B, W] uint32, W = ceil(V / 32)
    constrained: jax.Array,  # [B] bool: rows without a grammar keep every token
) -> jax.Array:  # [B, V]
    V = logits.shape[-1]
    ids = jnp.arange(V, dtype=jnp.uint32)
    words = jnp.take(bits, (ids >> 5).astype(jnp.int32), axis=1)  # [B, V]
    allowed = ((words >> (ids & 31)) & 1).astype(bool)
    return jnp.where(constrained[:, None] & ~allowed, -jnp.inf, logits)


class TokenMatcher:
    """One request's grammar state (not thread-safe; the engine thread owns it)."""

    def __init__(self, matcher, words: int):
        self._m = matcher
        self._words = words

    def bitmask(self) -> np.ndarray:  # [W] uint32
        bits = np.frombuffer(self._m.compute_bitmask(), np.uint32)
        if bits.shape[0] < self._words:  # the engine's vocabulary may be shorter than the model's
            bits = np.concatenate([bits, np.zeros(self._words - bits.shape[0], np.uint32)])
        return bits[: self._words]

    def consume(self, token: int) -> bool:
        """False when the grammar refuses the token (cannot happen for a token the mask allowed)."""
        return bool(self._m.consume_token(int(token)))

    @property
    def done(self) -> bool:
        """The grammar is complete and its end token was taken (or nothing more can follow)."""
        return bool(self._m.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self._m.is_accepting())

    @property
    def error(self) -> str | None:
        return self._m.get_error() if self._m.is_error() else None


class Grammars:
    """Grammar compilation for one tokenizer (a `tokenizers.Tokenizer`); builds `TokenMatcher`s.

    `vocab_size` is the model's (it may exceed the tokenizer's: ids past the tokenizer are never allowed);
    `eos_ids` are the end-of-turn ids a finished grammar allows.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_ids):
        self._llg = llguidance
        eos = [int(e) for e in eos_ids]
        if not eos:
            raise GrammarError("constrained decoding needs at least one end-of-turn token id")
        self.vocab_size = vocab_size
        self.words = bitmask_words(vocab_size)
        self._tokenizer = llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=vocab_size, eos_token=eos)

    def json_schema(self, schema: dict | str) -> str:
        """A grammar accepting exactly the JSON documents valid under `schema` (compact form)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"the schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise GrammarError(f"a JSON schema must be an object, got {type(schema).__name__}")
        try:
            grammar = self._llg.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        except ValueError as e:
            raise GrammarError(f"the schema cannot be compiled: {e}") from None
        self._check(grammar)
        return grammar

    def json_object(self) -> str:
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return self.json_schema({"type": "object"})

    def _check(self, grammar: str) -> None:
        error = self._llg.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            raise GrammarError(f"the schema cannot be compiled: {error}")

    def matcher(self, grammar: str) -> TokenMatcher:
        m = self._llg.LLMatcher(self._tokenizer, grammar, log_level=0)
        if m.is_error():
            raise GrammarError(f"the grammar cannot be compiled: {m.get_error()}")
        return TokenMatcher(m, self.words)
