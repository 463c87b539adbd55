"""One stage of a run, described once: the experiment config read into frozen dataclasses.

    stage = describe(config, "pref")     # StageSpec: what the trainer, step, batches and reference code take
    stage.loss_name, stage.hparams.batch_size, stage.data.seq_len, stage.model, stage.mesh, stage.rules

Nothing below the trainer reads `config.data.*` or `config[stage]` again: the defaults live in
`train.config.base_config()` and are read here, in one place. The dataclasses are frozen and hashable, so
they are also the keys of the per-process cache of jitted functions.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from oyster_jax import models
from oyster_jax.sharding import make_mesh, parse_mesh_spec, resolve_rules
from oyster_jax.train import config as config_lib

SFT_LOSS = "sft"
PREF_LOSSES = ("orpo", "dpo", "ipo", "simpo")
REFERENCE_LOSSES = ("dpo", "ipo")  # losses that compare against a reference model


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Hyper-parameters of one stage (`config.sft` / `config.pref`): optimizer, batch and loss."""

    loss_name: str  # "sft" | "orpo" | "dpo" | "ipo" | "simpo"
    num_steps: int
    batch_size: int  # SFT: packed rows per step; preference: pairs per step
    microbatches: int
    learning_rate: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    grad_clip: float
    logits_chunk: int
    orpo_lambda: float = 0.1
    nll_on_prompt: bool = False  # ORPO only
    beta: float = 0.1
    simpo_gamma: float = 0.5
    label_smoothing: float = 0.0
    reference: str = "frozen"  # DPO / IPO: "frozen" | "precomputed"

    @property
    def is_pref(self) -> bool:
        return self.loss_name != SFT_LOSS

    @property
    def frozen_reference(self) -> bool:
        """A frozen copy of the start parameters runs beside the policy in every step."""
        return self.loss_name in REFERENCE_LOSSES and self.reference == "frozen"

    @property
    def precomputed_reference(self) -> bool:
        """The start model's log-probs are computed once, before training, and fed with each batch."""
        return self.loss_name in REFERENCE_LOSSES and self.reference == "precomputed"

    @property
    def orpo_nll_on_prompt(self) -> bool:
        return self.loss_name == "orpo" and self.nll_on_prompt


def hyper_from_config(stage_cfg, stage_name: str) -> Hyper:
    """`config.sft` / `config.pref` (a ConfigDict or a dict) -> Hyper; the SFT stage has no loss choice."""
    get = stage_cfg.get
    pref = stage_name == "pref"
    fields = {f.name: f for f in dataclasses.fields(Hyper)}
    values = {"loss_name": str(get("loss", "orpo")) if pref else SFT_LOSS}
    for name, field in fields.items():
        if name == "loss_name":
            continue
        if field.default is dataclasses.MISSING:
            values[name] = stage_cfg[name]
        elif pref:
            values[name] = get(name, field.default)
    casts = {f.name: f.type for f in dataclasses.fields(Hyper)}
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    return Hyper(**{k: kinds[casts[k]](v) for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where a stage's batches come from and how they are laid out (`config.data`)."""

    task: str  # SFT: data.sft_task; preference: data.pref_task (a data spec)
    mixture: tuple[tuple[str, float], ...]  # data.sft_mixture / pref_mixture ((spec, rate), ...); () = task
    seq_len: int  # SFT: packed row length; preference: prompt + completion per row
    shared_len: int  # preference: 0 two rows per pair, -1 sized from the data, L one row of L per pair
    max_prompt_len: int  # 0: the pipeline's default (seq_len // 2)
    tokenizer: str  # "" = the task's own (the bundled tiny tokenizer)
    chat_format: str  # "" = the task's
    chain_style: str  # "" = the task's; "prose" | "tagged" (core.chat.render_chain)
    synthetic: bool  # random tokens instead of the data pipeline
    heldout_task: str  # held-out preference pairs (train.evals), in every stage
    heldout_split: str
    heldout_seq_len: int  # data.pref_seq_len


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """Held-out evaluations run inside `train()` (`config.evals`, see `train.evals`)."""

    names: tuple[str, ...]
    every_steps: int  # 0: at the end of the stage only
    batch_size: int
    max_batches: int  # 0: every held-out example


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """Everything one stage needs from the experiment config, read once by `describe`."""

    stage_name: str  # "sft" | "pref" (also the stage's directory in the workdir)
    hparams: Hyper
    model: models.ModelConfig
    mesh: jax.sharding.Mesh
    rules: tuple
    data: DataSpec
    evals: EvalSpec
    seed: int
    init_from: str  # "" random init | an HF directory | an Orbax model checkpoint
    start_from_stage: str  # "sft" when this stage starts from that stage's final parameters, else ""
    checkpoint_every: int
    checkpoint_keep: int
    checkpoint_async: bool
    log_every: int
    peak_tflops: float  # per device; 0: the per-chip table (train.metrics.peak_flops)
    fresh: bool
    throttle_seconds: float

    @property
    def loss_name(self) -> str:
        return self.hparams.loss_name

    @property
    def is_pref(self) -> bool:
        return self.hparams.is_pref

    @property
    def data_source(self):
        """What the stage reads: the mixture {spec: rate} when one is configured, else the one task spec."""
        return dict(self.data.mixture) if self.data.mixture else self.data.task

    @property
    def data_key(self) -> str:
        """The config key that names the stage's data (for error messages)."""
        kind = "pref" if self.is_pref else "sft"
        return f"config.data.{kind}_mixture" if self.data.mixture else f"config.data.{kind}_task"


def mesh_from_config(spec: str):
    """config.mesh -> Mesh. A mesh without a -1 axis that needs fewer devices than there are takes the first
    ones (e.g. "data=1,fsdp=1,tensor=1" on an 8-device host: a single-device run). A mesh this host cannot
    build is a ConfigError naming config.mesh."""
    try:
        shape = parse_mesh_spec(spec)
        need = math.prod(shape.values())
        devices = jax.devices()
        if -1 not in shape.values() and 0 < need < len(devices):
            devices = devices[:need]
        return make_mesh(shape, devices=devices)
    except ValueError as e:
        raise models.ConfigError(f"config.mesh={spec!r}: {e}") from e


def describe(config, stage_name: str, mesh=None) -> StageSpec:
    """Read `config` once for `stage_name` (default mesh: config.mesh on this process's devices)."""
    stages = config_lib.stages_of(config)
    d = config.data
    pref = stage_name == "pref"
    data = DataSpec(
        task=str(d.pref_task if pref else d.sft_task),
        mixture=config_lib.parse_mixture(
            d.get("pref_mixture" if pref else "sft_mixture", ""), "data.pref_mixture" if pref else "data.sft_mixture"
        ),
        seq_len=int(d.pref_seq_len if pref else d.seq_len),
        shared_len=int(d.get("pref_shared_len", 0)) if pref else 0,
        max_prompt_len=int(d.get("max_prompt_len", 0) or 0),
        tokenizer=str(d.get("tokenizer", "") or ""),
        chat_format=str(d.get("chat_format", "") or ""),
        chain_style=str(d.get("chain_style", "") or ""),
        synthetic=bool(config.get("synthetic_data", False)),
        heldout_task=str(d.get("heldout_pref_task", "") or ""),
        heldout_split=str(d.get("heldout_split", "test")),
        heldout_seq_len=int(d.pref_seq_len),
    )
    evals = EvalSpec(
        names=tuple(str(n) for n in (config.get("evals") or ())),
        every_steps=int(config.get("eval_every_steps", 0)),
        batch_size=int(config.get("eval_batch_size", 32)),
        max_batches=int(config.get("eval_max_batches", 0)),
    )
    return StageSpec(
        stage_name=stage_name,
        hparams=hyper_from_config(config[stage_name], stage_name),
        model=config_lib.model_config(config),
        mesh=mesh if mesh is not None else mesh_from_config(config.mesh),
        rules=resolve_rules(config.sharding),
        data=data,
        evals=evals,
        seed=int(config.seed),
        init_from=str(config.init_from or ""),
        start_from_stage="sft" if pref and "sft" in stages else "",
        checkpoint_every=max(int(config.checkpoint.every_steps), 1),
        checkpoint_keep=int(config.checkpoint.keep),
        checkpoint_async=bool(config.checkpoint.async_save),
        log_every=max(int(config.log_every), 1),
        peak_tflops=float(config.peak_tflops or 0.0),
        fresh=bool(config.fresh),
        throttle_seconds=float(config.throttle_seconds or 0.0),
    )
