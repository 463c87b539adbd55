"""Pallas kernels, one folder each, with a pure-JAX reference beside every kernel."""

from oyster_jax.kernels.flash_attention import flash_attention

__all__ = ["flash_attention"]
