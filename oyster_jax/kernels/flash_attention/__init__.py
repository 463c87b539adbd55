"""Flash attention: our own Pallas kernels (Triton for GPU, Mosaic for TPU) and the pure-JAX reference."""

from oyster_jax.kernels.flash_attention.api import default_style, flash_attention, flash_attention_with_style
from oyster_jax.kernels.flash_attention.common import GPU_BLOCKS, TPU_BLOCKS, BlockSizes, KernelTuning
from oyster_jax.kernels.flash_attention.reference import attention_reference

__all__ = [
    "GPU_BLOCKS",
    "TPU_BLOCKS",
    "BlockSizes",
    "KernelTuning",
    "attention_reference",
    "default_style",
    "flash_attention",
    "flash_attention_with_style",
]
