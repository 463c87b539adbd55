"""Trainers: constructive SFT and preference optimisation (ORPO, DPO, IPO, SimPO).

    from oyster_jax.train import train, losses
    results = train(config, workdir)     # config: configs/experiments/<exp>.py get_config(); see train.config

Modules: `config` (experiment configs), `stage` (one stage's frozen description, read once from the
config), `batches` (one iterator per stage, laid out by `oyster_jax.data.layouts`), `losses` (pure loss
functions, TRL semantics), `step` (the jitted update), `optim` (AdamW, warmup + cosine), `checkpoint`
(Orbax manager with fallback), `metrics` (FLOPs, peak table, MFU, jsonl, TensorBoard, PNG), `evaluate`
(held-out preference accuracy), `evals` (the evaluations `config.evals` runs inside `train()`),
`tokenizer_files` (the tokenizer saved beside the checkpoints), `trainer` (the loop).
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
