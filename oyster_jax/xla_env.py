"""XLA flags the trainers' entry points set before JAX starts (import this module before `jax`).

XLA:CPU's YNNPACK dot fusions run the train step's [B·T, D] x [D, F] matmuls at about 155 GFLOP/s on the
2-core x86 test machine where its default dot path reaches about 245 (K = 256: the tiny model's MLP and
attention projections); turning them off made the tiny ORPO step ~12% faster
(`python -m oyster_jax.bench.train_step`). Only applied when the user has not set that flag; it is a
CPU-only flag, harmless on GPU and TPU.
"""

import os

_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def apply() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + _FLAG).strip()


apply()
