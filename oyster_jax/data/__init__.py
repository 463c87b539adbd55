"""oyster_jax.data: vocabularies, chat format, record schemas, SeqIO tasks, numpy batch iterators, seed data.

Importing this package is cheap; TensorFlow/SeqIO load only when a name that needs them is used.

Trainer API (numpy, int32 [B, T]; layout and guarantees in ``oyster_jax.data.pipeline``)::

    from oyster_jax import data
    it = data.make_sft_iterator("oyster_csa_sft_mix", batch_size=8, seq_len=512, seed=0)
    batch = next(it)      # tokens, loss_weights (assistant tokens incl. thinking), segment_ids (0 = pad), positions
    state = it.get_state()          # JSON-able; it.set_state(state) resumes exactly (also state_dict/load_state_dict)
    pref = data.make_pref_iterator("oyster_csa_seed_pref", batch_size=4, seq_len=256, seed=0)
    batch = next(pref)    # [2B, T]: rows [0, B) chosen, [B, 2B) rejected; loss_weights = completion mask
    held_out = data.make_pref_iterator("oyster_csa_seed_pref", split="test", batch_size=4, seq_len=256,
                                       shuffle=False, repeat=False)   # one pass over held-out template families

Both take ``shard_index`` / ``shard_count`` (default ``jax.process_index()`` / ``jax.process_count()``),
``vocab`` (default: the task's), ``rates`` (mixture override), ``chat_format``/``chain_style``
(default: the task's), ``shuffle``, ``repeat``. Sources are task/mixture names (registered by
``import oyster_jax.data.tasks``, which the iterators do for you), seqio objects, data specs (paths,
``hf:PATH[:split]``), or a mixture ``{spec: rate}``.

Other pieces:

- ``HfTokenizerVocabulary(path)``: ``seqio.Vocabulary`` over a ``tokenizer.json``; ids identical to
  ``tokenizers`` (``add_special_tokens=False``), works in tf.data graph mode. ``load_vocabulary(path)``
  also takes SentencePiece ``*.model`` files. ``default_tokenizer_path()`` / ``default_vocabulary()``:
  the bundled 4096-id byte-level BPE tokenizer.
- ``oyster_jax.core.chat``: ChatML (Qwen3) and DeepSeek-R1 rendering/parsing, generation prompts,
  ``split_thinking``, safety-chain rendering (``"prose"`` or ``"tagged"``). No TensorFlow.
- ``oyster_jax.core.schemas``: JSONL schemas (sft, pref, eval, constructive); ``read_records(path, kind)``
  raises ``RecordError`` naming ``file:line: field``.
- ``oyster_jax.data.formats``: data specs (paths, ``hf:PATH[:split]``) and record formats (project, TRL,
  chat, Hugging Face ``datasets``), normalized to the project schema (docs/data.md).
- ``oyster_jax.data.tasks``: built-in SeqIO tasks/mixtures (standard ``inputs``/``targets`` features),
  ``register_jsonl_task``, ``task_for_spec``, ``holdout_split``.
- ``oyster_jax.data.tf_setup``: the one import of TensorFlow, SeqIO and TFDS; it hides every GPU and TPU
  from TensorFlow (``tf.config.set_visible_devices``) so that JAX keeps them.
- ``oyster_jax.data.tfds_builders``: TFDS builders ``strata_sword`` (manual dir) and ``oyster_csa_seed``.
- ``oyster_jax.data.strata_sword``: the one Strata-Sword loader (harness, SeqIO tasks and TFDS builder).
- ``oyster_jax.data.seed``: the bundled seed dataset (``python -m oyster_jax.data.seed.generate``) and
  ``seed.categories`` (L2 -> L1 taxonomy map, shared with ``oyster_jax.core.taxonomy``).
"""

from __future__ import annotations

import importlib
import pathlib

__all__ = [
    "HfTokenizerVocabulary",
    "load_vocabulary",
    "default_tokenizer_path",
    "default_vocabulary",
    "RecordError",
    "read_records",
    "validate_record",
    "make_sft_iterator",
    "make_pref_iterator",
    "holdout_split",
    "register_jsonl_task",
    "register_sft_mixture",
    "SEED_DIR",
]

SEED_DIR = pathlib.Path(__file__).resolve().parent / "seed"

_LAZY = {
    "HfTokenizerVocabulary": "oyster_jax.data.vocab",
    "load_vocabulary": "oyster_jax.data.vocab",
    "default_vocabulary": "oyster_jax.data.vocab",
    "RecordError": "oyster_jax.core.schemas",
    "read_records": "oyster_jax.core.schemas",
    "validate_record": "oyster_jax.core.schemas",
    "make_sft_iterator": "oyster_jax.data.pipeline",
    "make_pref_iterator": "oyster_jax.data.pipeline",
    "holdout_split": "oyster_jax.data.tasks",
    "register_jsonl_task": "oyster_jax.data.tasks",
    "register_sft_mixture": "oyster_jax.data.tasks",
}


def default_tokenizer_path() -> str:
    """Path of the bundled tiny tokenizer (``oyster_jax/data/seed/tokenizer.json``); no TensorFlow import."""
    return str(SEED_DIR / "tokenizer.json")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'oyster_jax.data' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
