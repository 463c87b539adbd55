"""Decode attention: one new query per row against a KV cache, as a Pallas kernel, and its pure-JAX reference."""

from oyster_jax.kernels.decode_attention.api import decode_attention
from oyster_jax.kernels.decode_attention.reference import decode_attention_reference

__all__ = ["decode_attention", "decode_attention_reference"]
