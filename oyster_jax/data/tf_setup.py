"""The one place TensorFlow is imported: `from oyster_jax.data.tf_setup import tf, seqio` (and `tfds`).

TensorFlow only feeds the data pipeline (SeqIO tasks, TFDS builders, `tf.data` graph tokenization); JAX owns
the accelerators. Left alone, TensorFlow would claim every GPU's memory when it starts, so it is told here,
before anything runs, that it has no GPUs and no TPUs. This is done through TensorFlow's own device list
and never through the CUDA device-visibility environment variable, which would hide them from JAX too.

SeqIO and TFDS import TensorFlow themselves, so they are imported through this module as well (ruff's
banned-api rule in pyproject.toml keeps every other module from importing any of the three directly).
`tfds` loads on first use: most callers never need it.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402, TID251

__all__ = ["tf", "seqio", "hide_accelerators"]  # and `tfds`, loaded on first use

log = logging.getLogger(__name__)


def hide_accelerators() -> None:
    """Make TensorFlow see no GPU and no TPU (idempotent)."""
    for device_type in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], device_type)
        except RuntimeError:
            # TensorFlow was imported and started elsewhere before us; its devices can no longer change.
            visible = tf.config.get_visible_devices(device_type)
            if visible:
                log.warning(
                    "TensorFlow started before oyster_jax.data.tf_setup and sees %s; it may hold accelerator "
                    "memory beside JAX. Import oyster_jax.data.tf_setup before using TensorFlow.",
                    [d.name for d in visible],
                )


hide_accelerators()

import seqio  # noqa: E402, TID251  (imports TensorFlow, which is set up above)


def __getattr__(name: str):
    if name == "tfds":
        import tensorflow_datasets  # noqa: TID251  (slow to import; few callers need it)

        globals()["tfds"] = tensorflow_datasets
        return tensorflow_datasets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
