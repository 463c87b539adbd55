"""Core types every layer may use: the safety chain, the risk taxonomy, the chat format and the record schemas.

Pure Python (no JAX, no TensorFlow): the bottom of the import order (see ``tests/test_import_layers.py``).

- ``oyster_jax.core.chain``: the safety chain (``SafetyChain``, parsing and rendering).
- ``oyster_jax.core.taxonomy``: risk levels, categories, guidelines, the official rules when present.
- ``oyster_jax.core.chat``: ChatML / DeepSeek-R1 rendering and parsing, generation prompts, thinking.
- ``oyster_jax.core.schemas``: JSONL record schemas with ``file:line: field`` errors.
"""
