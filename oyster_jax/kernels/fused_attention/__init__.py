"""CPU-fused attention: materialised scores with a hand-written backward laid out for XLA:CPU
(`attention_impl="cpu_fused"`, what `auto` picks on CPU)."""

from oyster_jax.kernels.fused_attention.api import fused_attention

__all__ = ["fused_attention"]
