"""Which math the model runs for the backend it runs on: the one place that decides it.

On TPU and GPU the layers are plain einsums differentiated by autodiff. On XLA:CPU three paths tuned for it
are used instead (each measured faster on the 2-core CPU; the math is the same):
- the projections and the MLP as 2-D matmuls over B*T rows (`models.transformer`);
- the LM head's log-probs with a hand-written backward (`train.head_logprobs`);
- the CPU-fused attention (`attention_impl="auto"` picks `"cpu_fused"`, see `models.attention`).
`ModelConfig.math_impl` forces either branch ("plain" | "cpu_tuned"), so both run in the CPU tests;
`attention_impl` forces the attention on its own.
"""

from __future__ import annotations

import jax

MATH_IMPLS = ("auto", "plain", "cpu_tuned")


def is_cpu(platform: str | None = None) -> bool:
    """Whether `platform` (default: the backend JAX computes on by default) is the CPU."""
    return (platform or jax.default_backend()) == "cpu"


def cpu_tuned(math_impl: str, platform: str | None = None) -> bool:
    """Whether the CPU-tuned layouts run: `math_impl="auto"` on the CPU only, or when forced."""
    if math_impl not in MATH_IMPLS:
        raise ValueError(f"math_impl={math_impl!r}: expected one of {MATH_IMPLS}")
    return is_cpu(platform) if math_impl == "auto" else math_impl == "cpu_tuned"
