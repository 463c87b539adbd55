"""Numerical tolerances: one place, never loosened to make a test pass."""

HF_LOGITS_F32 = 1e-4  # max |Δlogits| vs transformers, float32
SHARDED_VS_SINGLE_REL = 1e-5  # loss and gradients, 8-device mesh vs 1 device
KERNEL_F32 = 1e-5  # flash attention vs reference, values and gradients
KERNEL_BF16 = 2e-2
LOSS_VS_TRL = 1e-6
RESUME_PARAMS = 1e-6
MULTIPROCESS_VS_SINGLE = 1e-5  # absolute, per-step loss, 2 processes x 4 CPU devices vs 1 process x 8 (issue 8)
FUSED_VS_AUTODIFF_F32 = 1e-5  # hand-written backward passes vs jax.grad of the same math, float32
# Our GGUF dequantization (gguf package, numpy) vs transformers' own (torch): the same float32 arithmetic on the
# same blocks, so only the order of a multiply-add can differ (issue 14 asks for <= 1e-6).
GGUF_DEQUANT = 1e-6
REMAT_VS_NO_REMAT_F32 = 1e-6  # gradients with any remat policy vs none: the same math, recomputed
