"""SeqIO vocabularies: a Hugging Face ``tokenizer.json`` vocabulary and a loader that also takes SentencePiece.

``HfTokenizerVocabulary(path)`` wraps the ``tokenizers`` library. ``encode(text)`` returns exactly
``Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids`` (the chat template writes
its own BOS/end markers; pass ``add_special_tokens=True`` to get the tokenizer's post-processor too).
``encode_tf``/``decode_tf`` run the same Rust tokenizer through ``tf.numpy_function``, so the vocabulary
works inside ``tf.data`` graph mode (``dataset.map(vocab.encode_tf)``), on scalars and on batches.

Special ids: ``eos_id``/``pad_id`` come from the constructor arguments, else from a
``tokenizer_config.json`` beside the file, else from well-known names (``<|endoftext|>``, ``</s>``,
``<｜end▁of▁sentence｜>``, ...). ``pad_id`` falls back to 0 (the seqio convention; packed rows mark
padding with ``segment_ids == 0`` anyway).

``load_vocabulary(path)`` picks the class from the file: ``*.json`` -> HfTokenizerVocabulary,
``*.model`` -> ``seqio.SentencePieceVocabulary``. ``default_tokenizer_path()`` is the bundled tiny
byte-level BPE tokenizer (4096 ids, trained on the seed data by ``oyster_jax.data.seed.train_tokenizer``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import tokenizers

from oyster_jax.data.tf_setup import seqio, tf

__all__ = ["HfTokenizerVocabulary", "load_vocabulary", "default_tokenizer_path", "default_vocabulary"]

_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<｜end▁of▁sentence｜>", "<|end_of_text|>", "<eos>", "[SEP]")
_PAD_CANDIDATES = ("<|endoftext|>", "<pad>", "[PAD]", "<|pad|>", "<｜end▁of▁sentence｜>", "<|finetune_right_pad_id|>")
_UNK_CANDIDATES = ("<unk>", "[UNK]", "<|unk|>")


def default_tokenizer_path() -> str:
    """Path of the bundled tiny tokenizer (``oyster_jax/data/seed/tokenizer.json``)."""
    return str(pathlib.Path(__file__).resolve().parent / "seed" / "tokenizer.json")


def _token_text(value) -> str | None:
    """tokenizer_config.json stores special tokens as a string or as an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class HfTokenizerVocabulary(seqio.Vocabulary):
    """A ``seqio.Vocabulary`` over a Hugging Face ``tokenizer.json`` (byte-level BPE, WordPiece, Unigram...).

    Args:
      path: the ``tokenizer.json`` file (or a directory holding one).
      eos_token / pad_token / unk_token: override the special tokens (must exist in the vocabulary).
      add_special_tokens: passed to ``Tokenizer.encode`` (default False: the chat template adds markers).
      extra_ids: seqio sentinel ids appended after the base vocabulary.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        add_special_tokens: bool = False,
        extra_ids: int = 0,
    ):
        path = pathlib.Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer.json not found")
        self._path = str(path)
        self._json_bytes = path.read_bytes()
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(self._json_bytes.decode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
        self._add_special_tokens = add_special_tokens
        config = self._read_config(path.parent / "tokenizer_config.json")
        self._eos_id = self._resolve("eos_token", eos_token, config, _EOS_CANDIDATES)
        self._pad_id = self._resolve("pad_token", pad_token, config, _PAD_CANDIDATES)
        self._unk_id = self._resolve("unk_token", unk_token, config, _UNK_CANDIDATES)
        if self._pad_id is None:
            self._pad_id = 0
        super().__init__(extra_ids=extra_ids)

    # -- construction helpers ------------------------------------------------------------------

    @staticmethod
    def _read_config(config_path: pathlib.Path) -> dict:
        if not config_path.is_file():
            return {}
        try:
            return json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path}:{e.lineno}: not valid JSON ({e.msg})") from None

    def _resolve(self, field: str, explicit: str | None, config: dict, candidates: Sequence[str]) -> int | None:
        if explicit is not None:
            token_id = self._tokenizer.token_to_id(explicit)
            if token_id is None:
                raise ValueError(f"{self._path}: {field}={explicit!r} is not in the vocabulary")
            return token_id
        configured = _token_text(config.get(field))
        if configured is not None and self._tokenizer.token_to_id(configured) is not None:
            return self._tokenizer.token_to_id(configured)
        for name in candidates:
            token_id = self._tokenizer.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    # -- seqio.Vocabulary interface ------------------------------------------------------------

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (offsets, batch encoding, ...)."""
        return self._tokenizer

    @property
    def path(self) -> str:
        return self._path

    @property
    def add_special_tokens(self) -> bool:
        return self._add_special_tokens

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def bos_id(self) -> int | None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def _encode(self, s: str) -> list[int]:
        return self._tokenizer.encode(s, add_special_tokens=self._add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Fast batched ``encode`` (the Rust tokenizer's thread pool)."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=self._add_special_tokens)]

    def _decode(self, ids) -> str:
        # seqio maps out-of-range ids to unk before this; ids past the base vocab (extra_ids) are dropped.
        ids = [int(i) for i in ids if 0 <= int(i) < self._base_vocab_size]
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    # -- TensorFlow (graph mode through numpy_function) ----------------------------------------

    def _encode_np(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """bytes array of any shape -> (flat ids int32, row lengths int64) in row-major order."""
        texts = [b.decode("utf-8") for b in np.asarray(s, dtype=object).reshape(-1)]
        encoded = self.encode_batch(texts)
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        flat = np.fromiter((i for e in encoded for i in e), dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Scalar string -> int32 [n]; rank-k strings -> ragged int32 [..., None]."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        flat, lengths = tf.numpy_function(self._encode_np, [s], (tf.int32, tf.int64), stateful=False)
        flat.set_shape([None])
        if s.shape.rank == 0:
            return flat
        lengths.set_shape([None])
        ragged = tf.RaggedTensor.from_row_lengths(flat, lengths)
        if s.shape.rank > 1:
            ragged = tf.RaggedTensor.from_uniform_row_length(ragged, tf.shape(s, out_type=tf.int64)[-1])
            for dim in reversed(range(s.shape.rank - 2)):
                ragged = tf.RaggedTensor.from_uniform_row_length(ragged, tf.shape(s, out_type=tf.int64)[dim + 1])
        return ragged

    def _decode_rows_np(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        rows = ids.reshape(-1, ids.shape[-1])
        texts = [self.decode(row.tolist()).encode("utf-8") for row in rows]
        return np.array(texts, dtype=object).reshape(ids.shape[:-1])

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., n] -> strings [...], each row exactly ``decode(row)`` (truncated through EOS)."""
        return self._decode_tf(ids)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
        if ids.shape.rank == 0:
            raise ValueError("decode_tf: ids must have rank >= 1")
        out = tf.numpy_function(self._decode_rows_np, [ids], tf.string, stateful=False)
        out.set_shape(ids.shape[:-1])
        return out

    # -- identity ------------------------------------------------------------------------------

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash: equal for two vocabularies built from identical files and options."""
        h = hashlib.sha256(self._json_bytes)
        h.update(repr((self._add_special_tokens, self._eos_id, self._pad_id, self._unk_id, self.extra_ids)).encode())
        return h.hexdigest()[:16]

    def __eq__(self, other):
        return isinstance(other, HfTokenizerVocabulary) and self.fingerprint == other.fingerprint

    def __hash__(self):
        return hash(self.fingerprint)

    def __str__(self) -> str:
        return f"HfTokenizerVocabulary(path={self._path}, vocab_size={self.vocab_size}, eos_id={self._eos_id})"

    __repr__ = __str__


def load_vocabulary(path: str | os.PathLike, **kwargs) -> seqio.Vocabulary:
    """``tokenizer.json`` (or a directory with one) -> HfTokenizerVocabulary; ``*.model`` -> SentencePiece."""
    p = pathlib.Path(path)
    if p.suffix == ".model":
        return seqio.SentencePieceVocabulary(str(p), **kwargs)
    return HfTokenizerVocabulary(p, **kwargs)


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> HfTokenizerVocabulary:
    """The bundled tiny tokenizer as a vocabulary (cached: one per process)."""
    return HfTokenizerVocabulary(default_tokenizer_path())


def vocabulary_fingerprint(vocab: seqio.Vocabulary) -> str:
    """A stable identity for caches and iterator states (content hash where we can compute one)."""
    if isinstance(vocab, HfTokenizerVocabulary):
        return vocab.fingerprint
    if isinstance(vocab, seqio.SentencePieceVocabulary):
        return hashlib.sha256(vocab.sp_model).hexdigest()[:16]
    return f"{type(vocab).__name__}:{vocab.vocab_size}"
