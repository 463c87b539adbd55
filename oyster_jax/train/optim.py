"""AdamW with linear warmup and cosine decay, global-norm clipping; weight decay only on matrices."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(stage_cfg, num_steps: int) -> optax.Schedule:
    """0 -> `learning_rate` over `warmup_steps`, then cosine down to `learning_rate * min_lr_ratio`."""
    peak = float(stage_cfg.learning_rate)
    warmup = int(min(stage_cfg.warmup_steps, max(num_steps - 1, 0)))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else peak,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=peak * float(stage_cfg.min_lr_ratio),
    )


def _decay_mask(params):
    # Norm scales and biases are vectors: decaying them only hurts. Matrices and embeddings decay.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(stage_cfg, num_steps: int) -> optax.GradientTransformation:
    chain = []
    if stage_cfg.grad_clip and stage_cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(float(stage_cfg.grad_clip)))
    chain.append(
        optax.adamw(
            learning_rate_schedule(stage_cfg, num_steps),
            b1=float(stage_cfg.b1),
            b2=float(stage_cfg.b2),
            eps=float(stage_cfg.eps),
            weight_decay=float(stage_cfg.weight_decay),
            mask=_decay_mask,
        )
    )
    return optax.chain(*chain)
