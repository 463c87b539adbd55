"""Trainers: constructive SFT and preference optimisation (ORPO, DPO, IPO, SimPO).

    from oyster_jax.train import train, losses
    results = train(config, workdir)     # config: configs/experiments/<exp>.py get_config(); see train.config

Modules: `losses` (pure loss functions, TRL semantics), `step` (the jitted update), `optim` (AdamW,
warmup + cosine), `checkpoint` (Orbax manager with fallback), `metrics` (MFU, jsonl, TensorBoard, PNG),
`evaluate` (held-out preference accuracy), `trainer` (the loop), `config` (experiment configs).
"""

from oyster_jax.train import losses
from oyster_jax.train.trainer import (
    NonFiniteLossError,
    StageResult,
    TrainingError,
    WorkdirMismatchError,
    WorkdirRefusedError,
    train,
)

__all__ = [
    "NonFiniteLossError",
    "StageResult",
    "TrainingError",
    "WorkdirMismatchError",
    "WorkdirRefusedError",
    "losses",
    "train",
]
