"""The trainer: SFT and preference stages on a device mesh, with Orbax checkpoints and an exact resume.

    results = train(config, workdir)        # runs config.stages, e.g. "sft,pref"; returns {stage: StageResult}

Workdir layout (one directory per stage, so a chained run resumes in whichever stage it was killed):

    W/config.json                 the experiment config of the latest start
    W/<stage>/checkpoints/<step>/ params, train_state, data, config     (see oyster_jax.train.checkpoint)
    W/<stage>/model_config.json   ModelConfig of the checkpoints (a different model is refused)
    W/<stage>/metrics.jsonl       one line per step;  W/<stage>/tensorboard/  event files
    W/<stage>/evals.jsonl         held-out evaluations (config.evals, train.evals)
    W/<stage>/tokenizer/          the tokenizer of the data, with its chat template (Hugging Face layout)
    W/<stage>/DONE.json           written when the stage has finished (a rerun skips it)
    W/<stage>/lora.json           LoRA runs: the base model's path and fingerprint (a different base is refused)
    W/curves.png                  the curves of every stage

With LoRA (config.lora.rank > 0) the train state's `params` are the adapters alone: they and their optimizer
state are what checkpoints hold; the base is loaded (init_from, or the seed's random init) at every start and
must match the fingerprint recorded in lora.json. `StageResult.params` is base + adapters (models.lora.merge).

Each stage reads the experiment config once, into a frozen `train.stage.StageSpec`; everything below the
loop (step, batches, reference, evaluations) takes that description.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from tqdm import tqdm

from oyster_jax import distributed, models
from oyster_jax.models import lora as lora_lib
from oyster_jax.models import param_shardings
from oyster_jax.sharding import batch_sharding, replicated, resolve_rules, use_rules
from oyster_jax.train import batches as batches_lib
from oyster_jax.train import config as config_lib
from oyster_jax.train import evals as evals_lib
from oyster_jax.train import guard, optim, tokenizer_files
from oyster_jax.train import metrics as metrics_lib
from oyster_jax.train import step as step_lib
from oyster_jax.train import workdir as workdir_lib
from oyster_jax.train.checkpoint import Checkpointer, NoUsableCheckpointError
from oyster_jax.train.stage import StageSpec, describe, mesh_from_config

__all__ = [
    "NonFiniteLossError",
    "StageResult",
    "TrainingError",
    "WorkdirMismatchError",
    "train",
    "mesh_from_config",  # re-exported: scripts build the mesh of a config as the trainer does
    "resolve_rules",
]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class NonFiniteLossError(TrainingError):
    """The loss, gradient norm, parameters or optimizer state became NaN/Inf; nothing of that step was saved."""


class WorkdirRefusedError(TrainingError):
    """The workdir holds saved state this run cannot safely use; nothing in it was changed."""


class WorkdirMismatchError(WorkdirRefusedError):
    """The workdir holds checkpoints of another model."""


@dataclasses.dataclass
class StageResult:
    stage_name: str
    params: dict
    model_config: models.ModelConfig
    final_step: int
    final_metrics: dict
    stopped: str  # "done" | "sigterm" | "skipped" (already done in this workdir)
    wall_seconds: float
    step_compiles: int = 0  # compilations of the train step in this run (1 when nothing recompiled)
    evals: dict = dataclasses.field(default_factory=dict)  # {name: metrics} at the stage's end (config.evals)


# ------------------------------------------------------------------------------------------------
# SIGTERM: finish the step, save, stop.
# ------------------------------------------------------------------------------------------------


class _StopFlag:
    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------------------------------
# Shardings
# ------------------------------------------------------------------------------------------------


def trainable_params(cfg: models.ModelConfig, mesh, rules):
    """(abstract, shardings) of what the optimizer trains: every parameter, or with LoRA the adapters."""
    abstract, sh = models.abstract_params(cfg), param_shardings(cfg, mesh, rules)
    if cfg.lora is None:
        return abstract, sh
    return lora_lib.split(abstract)[1], lora_lib.split(sh)[1]


def base_shardings(cfg: models.ModelConfig, mesh, rules):
    """Shardings of the base parameters (all of them without LoRA)."""
    return param_shardings(lora_lib.without_adapters(cfg), mesh, rules)


def state_shardings(abstract_state, param_sh, mesh):
    """NamedSharding for every leaf of the train state: optimizer moments follow their parameter."""
    by_path = {}
    for path, sh in jax.tree_util.tree_flatten_with_path(param_sh)[0]:
        by_path[tuple(k.key for k in path)] = sh
    abstract_params = {
        tuple(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0]
    }

    def for_leaf(path, leaf):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for i in range(len(keys)):
            suffix = keys[i:]
            if suffix in by_path and abstract_params[suffix].shape == leaf.shape:
                return by_path[suffix]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(for_leaf, abstract_state)


# Jitted functions of earlier runs in this process (tests, notebooks): the same config and mesh reuse the
# compiled program instead of compiling it again.
_JIT_CACHE: dict = {}


def _cached(key, build):
    fn = _JIT_CACHE.get(key)
    if fn is None:
        if len(_JIT_CACHE) >= 16:
            _JIT_CACHE.clear()
        fn = _JIT_CACHE[key] = build()
    return fn


def _with_sharding(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _batch_shardings(mesh, example: dict):
    return {k: batch_sharding(mesh, np.ndim(v)) for k, v in example.items()}


def _to_device(batch: dict, shardings: dict):
    # One process: device_put; several: each process contributes its local rows of the global batch.
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}


def _check_divisible(rows: int, mesh, what: str):
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        raise TrainingError(
            f"{what}={rows} is not divisible by the data x fsdp mesh size {shards} (config.mesh); "
            f"choose a batch size that is a multiple of {shards}"
        )


# ------------------------------------------------------------------------------------------------
# Workdir bookkeeping
# ------------------------------------------------------------------------------------------------


def _arch(cfg: models.ModelConfig) -> dict:
    d = cfg.to_dict()
    return {k: d[k] for k in config_lib.ARCH_FIELDS if k in d}


_RECOVERY = (
    "Nothing was moved or deleted. To go on: {fix}use another --workdir, or pass --config.fresh=true to move "
    "{where} aside (kept, renamed) and start this stage from scratch"
)


def _has_saved_state(stage_dir: epath.Path) -> bool:
    ckpts = stage_dir / "checkpoints"
    return (stage_dir / "DONE.json").exists() or (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir()))


def _read_json(path: epath.Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, truncated or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _move_stage_aside(stage_dir: epath.Path, why: str) -> None:
    aside = workdir_lib.move_aside(stage_dir, "old")
    log.warning("config.fresh: %s; moved %s to %s and starting this stage from scratch", why, stage_dir, aside)


def _check_same_model(stage_dir: epath.Path, cfg: models.ModelConfig, fresh: bool) -> None:
    """Refuse a workdir whose checkpoints belong to another model, or whose model is unknown (no readable
    model_config.json beside saved checkpoints), unless asked to start fresh."""
    saved_path = stage_dir / "model_config.json"
    if not _has_saved_state(stage_dir):
        return
    saved = _read_json(saved_path)
    if saved is None:
        state = "missing" if not saved_path.exists() else "unreadable"
        why = f"{saved_path} is {state}, so the checkpoints in {stage_dir / 'checkpoints'} are of an unknown model"
        if fresh:
            return _move_stage_aside(stage_dir, why)
        fix = f"put back the {saved_path.name} of these checkpoints, or "
        raise WorkdirRefusedError(f"{why}. {_RECOVERY.format(fix=fix, where=stage_dir)}")
    mine = _arch(cfg)
    diffs = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
    if not diffs:
        return
    detail = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
    if not fresh:
        raise WorkdirMismatchError(
            f"{stage_dir} holds checkpoints of a different model ({detail}). Use another --workdir, or pass "
            f"--config.fresh=true to move them aside and start from scratch"
        )
    aside = workdir_lib.move_aside(stage_dir, "old")
    log.warning("config.fresh: moved checkpoints of another model (%s) to %s", detail, aside)


LORA_FILE = "lora.json"


def _check_same_base(stage_dir: epath.Path, spec: StageSpec, fp: str) -> None:
    """LoRA: refuse adapters trained on another base (W/<stage>/lora.json records the base's path and
    fingerprint); record them when the stage starts."""
    path = stage_dir / LORA_FILE
    mine = {
        "base_model": spec.init_from or f"random init, seed {spec.seed}",
        "base_path": str(epath.Path(spec.init_from).absolute()) if spec.init_from else "",
        "seed": spec.seed,
        "base_fingerprint": fp,
        "base_dtype": spec.model.param_dtype,
        "lora": spec.model.lora.to_dict(),
    }
    saved = _read_json(path)
    if _has_saved_state(stage_dir) and saved is not None and saved.get("base_fingerprint") != fp:
        if not spec.fresh:
            raise WorkdirMismatchError(
                f"{stage_dir} holds adapters trained on another base model: {path} records base "
                f"{saved.get('base_model')!r} (fingerprint {saved.get('base_fingerprint')}, "
                f"{saved.get('base_dtype')}), this run's base is {mine['base_model']!r} (fingerprint {fp}, "
                f"{mine['base_dtype']}). Use the same config.init_from and config.lora.base_dtype, another "
                "--workdir, or --config.fresh=true to move the stage aside and start from scratch"
            )
        _move_stage_aside(stage_dir, f"adapters of another base ({saved.get('base_model')!r})")
    if saved != mine or not path.exists():
        stage_dir.mkdir(parents=True, exist_ok=True)
        workdir_lib.write_json(path, mine)


def _read_done(stage_dir: epath.Path) -> dict | None:
    """DONE.json of a finished stage, or None. An unreadable one (torn by a crash of an older version) is
    moved aside with a warning: the stage then resumes from its newest checkpoint, which is the final step."""
    path = stage_dir / "DONE.json"
    if not path.exists():
        return None
    done = _read_json(path)
    if done is not None and isinstance(done.get("final_step"), int):
        return done
    aside = workdir_lib.move_aside(path, "corrupt") if distributed.is_main_process() else path
    log.warning("%s is unreadable; moved it to %s and resuming the stage from its newest checkpoint", path, aside)
    return None


def _restore_or_refuse(ckpt: Checkpointer, abstract_state, spec: StageSpec, stage_dir: epath.Path) -> tuple:
    """(checkpointer, restored or None). Checkpoints that exist but are all unusable are never silently
    replaced by a restart: refused, or with config.fresh moved aside."""
    try:
        return ckpt, ckpt.restore_latest(abstract_state)
    except NoUsableCheckpointError as e:
        if not spec.fresh:
            fix = "if the config changed since they were saved (model or optimizer settings), rerun with the one saved "
            fix += f"beside each step ({ckpt.directory}/<step>/config), or "
            raise WorkdirRefusedError(f"{e}. {_RECOVERY.format(fix=fix, where=stage_dir)}") from None
        ckpt.close()
        if distributed.is_main_process():
            _move_stage_aside(stage_dir, "no checkpoint is usable")
            stage_dir.mkdir(parents=True, exist_ok=True)
            workdir_lib.write_text(stage_dir / "model_config.json", spec.model.to_json())
        distributed.barrier(f"{stage_dir.name}_moved_aside")
        return Checkpointer(
            stage_dir / "checkpoints", keep=spec.checkpoint_keep, async_save=spec.checkpoint_async
        ), None


# ------------------------------------------------------------------------------------------------
# Initial parameters of a stage
# ------------------------------------------------------------------------------------------------


def _runtime_overrides(cfg: models.ModelConfig) -> dict:
    return {
        k: getattr(cfg, k)
        for k in ("param_dtype", "dtype", "attention_impl", "math_impl", "remat_policy", "scan_layers")
    }


def initial_params(spec: StageSpec, workdir: epath.Path):
    """(ModelConfig, params placed with their shardings) that the stage starts from. With LoRA: the base
    parameters only (init_from or the random init of the seed); the adapters come from `initial_adapters`."""
    cfg, mesh, rules = spec.model, spec.mesh, spec.rules
    if cfg.lora is not None:
        spec = dataclasses.replace(spec, model=lora_lib.without_adapters(cfg), start_from_stage="")
        return cfg, initial_params(spec, workdir)[1]
    if spec.start_from_stage:  # chained: start from the earlier stage's final parameters
        return load_stage_params(workdir / spec.start_from_stage, cfg, mesh, rules)
    source = spec.init_from
    sh = param_shardings(cfg, mesh, rules)
    if not source:
        key = jax.random.key(spec.seed)
        init = _cached(
            ("init_params", cfg, mesh, rules), lambda: jax.jit(lambda k: models.init_params(cfg, k), out_shardings=sh)
        )
        with use_rules(mesh, rules):
            params = init(key)
        return cfg, params
    from oyster_jax import convert

    if workdir_lib.is_remote(source):
        raise TrainingError(
            f"config.init_from={source}: starting weights are read from a local directory; copy them to "
            "local disk first (e.g. `gcloud storage cp -r`) and pass that path"
        )
    from oyster_jax.models.config import ConfigError

    try:
        loaded_cfg, params = convert.load_weights(source, mesh=mesh, rules=rules, **_runtime_overrides(cfg))
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:  # format errors name file and tensor
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainingError(f"config.init_from={source}: {first_line}") from e
    diffs = {k: (v, _arch(cfg).get(k)) for k, v in _arch(loaded_cfg).items() if _arch(cfg).get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs config.model {b!r}" for k, (a, b) in diffs.items())
        raise TrainingError(f"config.init_from={source}: the checkpoint is a different model ({detail})")
    return cfg, jax.device_put(params, sh)


def initial_adapters(spec: StageSpec, workdir: epath.Path):
    """LoRA: the adapters a stage starts from: the earlier stage's final ones (chained), else fresh (A random,
    B zero: the start model is the base)."""
    cfg, mesh, rules = spec.model, spec.mesh, spec.rules
    if spec.start_from_stage:
        return load_stage_params(workdir / spec.start_from_stage, cfg, mesh, rules)[1]
    _, sh = trainable_params(cfg, mesh, rules)
    init = _cached(
        ("init_adapters", cfg, mesh, rules),
        lambda: jax.jit(lambda k: lora_lib.split(models.init_params(cfg, k))[1], out_shardings=sh),
    )  # the base's initialisation is dead code here: XLA drops it
    with use_rules(mesh, rules):
        return init(jax.random.key(spec.seed))


def load_stage_params(stage_dir: epath.Path, cfg: models.ModelConfig, mesh, rules):
    """Final parameters of a finished stage (with LoRA: its adapters), restored into the current mesh's
    shardings."""
    import orbax.checkpoint as ocp

    ckpt_dir = stage_dir / "checkpoints"
    done = _read_json(stage_dir / "DONE.json")
    if done is None or not isinstance(done.get("final_step"), int):
        raise TrainingError(f"{stage_dir}: the stage has not finished (no readable DONE.json); run it first")
    step = done["final_step"]
    target = _with_sharding(*trainable_params(cfg, mesh, rules))
    params = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "params", target)
    return cfg, params


# ------------------------------------------------------------------------------------------------
# Reference log-probs for DPO / IPO
# ------------------------------------------------------------------------------------------------


def _precompute_reference(spec: StageSpec, ref_params, iterator, stage_dir, batch_sh):
    """One pass of the frozen start model over the stage's batches -> [num_steps, P, 2] reference log-probs.

    `iterator` must stand at the stage's start; it is rewound there afterwards."""
    hp = spec.hparams
    num_steps = hp.num_steps
    path = stage_dir / "reference_logps.npy"
    meta_path = stage_dir / "reference_logps.json"
    start_state = iterator.get_state()
    meta = {"num_steps": num_steps, "data_state": start_state, "loss": hp.loss_name}
    if path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == json.loads(json.dumps(meta)):
        with path.open("rb") as f:
            return np.load(f, allow_pickle=False)
    # With LoRA the reference is the base alone (`ref_params`), i.e. the model with the adapters off.
    cfg, mean_logps, chunk = lora_lib.without_adapters(spec.model), hp.loss_name == "ipo", hp.logits_chunk

    @jax.jit
    def ref_fn(params, batch):
        sums, counts = step_lib.pair_logprobs(cfg, params, batch, chunk)
        return sums / jnp.maximum(counts, 1.0) if mean_logps else sums

    out = []
    with use_rules(spec.mesh, spec.rules):
        for _ in tqdm(range(num_steps), desc="reference log-probs", unit="batch"):
            out.append(np.asarray(jax.device_get(ref_fn(ref_params, _to_device(next(iterator), batch_sh)))))
    iterator.set_state(start_state)
    ref = np.stack(out).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, ref, allow_pickle=False)
    workdir_lib.write_bytes(path, buf.getvalue())  # before its meta: the pair is valid only when both are
    workdir_lib.write_json(meta_path, meta, indent=None)
    return ref


# ------------------------------------------------------------------------------------------------
# The jitted step (shared by training and the ahead-of-time compile)
# ------------------------------------------------------------------------------------------------


def abstract_train_state(cfg: models.ModelConfig, optimizer, seed: int = 0) -> dict:
    trainable = models.abstract_params(cfg)
    if cfg.lora is not None:  # the optimizer sees only the adapters: no Adam moments for the base
        trainable = lora_lib.split(trainable)[1]
    return jax.eval_shape(lambda: step_lib.init_state(trainable, optimizer, jax.random.key(seed)))


def jitted_train_step(spec: StageSpec, example: dict, *, frozen_reference: bool):
    """jit(step) with explicit in/out shardings and the state donated; `example` gives batch shapes
    (arrays or ShapeDtypeStructs). Cached per process for identical stage descriptions. With LoRA the step
    always takes the frozen base as its third argument."""
    hp, cfg, mesh, rules = spec.hparams, spec.model, spec.mesh, spec.rules
    shapes = tuple(sorted((k, tuple(np.shape(v))) for k, v in example.items()))
    takes_frozen = frozen_reference or cfg.lora is not None

    def build():
        optimizer = optim.make_optimizer(hp, hp.num_steps)
        _, param_sh = trainable_params(cfg, mesh, rules)
        state_sh = state_shardings(abstract_train_state(cfg, optimizer, spec.seed), param_sh, mesh)
        batch_sh = _batch_shardings(mesh, example)
        step_fn = step_lib.make_train_step(cfg, hp, optimizer)
        repl = replicated(mesh)
        if takes_frozen:
            return jax.jit(
                step_fn,
                in_shardings=(state_sh, batch_sh, base_shardings(cfg, mesh, rules)),
                out_shardings=(state_sh, repl),
                donate_argnums=(0,),
            )
        return jax.jit(
            lambda st, b: step_fn(st, b),
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, repl),
            donate_argnums=(0,),
        )

    return _cached(("step", hp, cfg, spec.seed, mesh, rules, takes_frozen, shapes), build)


def abstract_batch(spec: StageSpec) -> dict:
    """ShapeDtypeStructs of one global batch of the stage (what the data pipeline would yield), from the
    stage description alone (`batches.abstract_layout`)."""
    return batches_lib.step_batch_spec(spec, batches_lib.abstract_layout(spec))


def aot_compile_train_step(config, stage_name: str, mesh=None):
    """Lower and compile the train step of `stage_name` for `mesh` (default: config.mesh) from abstract inputs
    only — no weights, no data. Returns the compiled executable (see `.memory_analysis()`)."""
    spec = describe(config, stage_name, mesh)
    hp, cfg = spec.hparams, spec.model
    example = abstract_batch(spec)
    _check_divisible(hp.batch_size // hp.microbatches, spec.mesh, f"config.{stage_name}.batch_size / microbatches")
    optimizer = optim.make_optimizer(hp, hp.num_steps)
    _, param_sh = trainable_params(cfg, spec.mesh, spec.rules)
    abstract_state = abstract_train_state(cfg, optimizer, spec.seed)
    state = _with_sharding(abstract_state, state_shardings(abstract_state, param_sh, spec.mesh))
    batch = _with_sharding(example, _batch_shardings(spec.mesh, example))
    frozen = hp.frozen_reference or cfg.lora is not None
    jitted = jitted_train_step(spec, example, frozen_reference=hp.frozen_reference)
    base_cfg = lora_lib.without_adapters(cfg)
    base = _with_sharding(models.abstract_params(base_cfg), base_shardings(cfg, spec.mesh, spec.rules))
    args = (state, batch) + ((base,) if frozen else ())
    with use_rules(spec.mesh, spec.rules):
        return jitted.lower(*args).compile()


# ------------------------------------------------------------------------------------------------
# One stage
# ------------------------------------------------------------------------------------------------


def _tokenizer_source(spec: StageSpec) -> tuple[str, str]:
    """(tokenizer.json path, chat format) the stage's data is rendered with."""
    from oyster_jax import data
    from oyster_jax.data import tasks as tasks_lib

    fmt = spec.data.chat_format
    if not fmt:
        try:
            first = spec.data.mixture[0][0] if spec.data.mixture else spec.data.task
            fmt = tasks_lib.task_options(first).get("chat_format") or "chatml"
        except KeyError:  # a JSONL path or a seqio task of someone else: the pipeline's default
            fmt = "chatml"
    return spec.data.tokenizer or data.default_tokenizer_path(), fmt


def _evaluate(spec: StageSpec, params, step: int, eval_cache: dict, names=None) -> dict:
    """Run held-out evaluations (outside the mesh's rules, as a user calling them after training would) and
    append them to W/<stage>/evals.jsonl."""
    results = evals_lib.run(spec, params, eval_cache, names)
    return {name: dict(result, step=step) for name, result in results.items()}


def _append_evals(stage_dir, results: dict) -> None:
    if not results or not distributed.is_main_process():
        return
    path = stage_dir / "evals.jsonl"
    old = path.read_text() if path.exists() else ""
    lines = "".join(json.dumps({"eval": name} | res) + "\n" for name, res in results.items())
    path.write_text(old + lines)


def run_stage(
    config,
    spec: StageSpec,
    workdir,
    *,
    progress: bool = True,
    stop_flag: _StopFlag | None = None,
    eval_cache: dict | None = None,
) -> StageResult:
    t_start = time.perf_counter()
    eval_cache = {} if eval_cache is None else eval_cache
    name, hp, cfg, mesh, rules = spec.stage_name, spec.hparams, spec.model, spec.mesh, spec.rules
    workdir = workdir_lib.resolve(workdir)
    stage_dir = workdir / name
    if distributed.is_main_process():
        _check_same_model(stage_dir, cfg, spec.fresh)
    distributed.barrier(f"{name}_workdir_checked")

    done_path = stage_dir / "DONE.json"
    base = None
    if cfg.lora is not None:  # the frozen base, loaded at every start and checked against the saved runs'
        _, base = initial_params(spec, workdir)
        if distributed.is_main_process():
            _check_same_base(stage_dir, spec, lora_lib.fingerprint(base))
        distributed.barrier(f"{name}_base_checked")

    done = _read_done(stage_dir)
    if done is not None:
        _, params = load_stage_params(stage_dir, cfg, mesh, rules)
        params = params if base is None else lora_lib.merge(base, params)
        log.info("%s: already finished at step %d in %s; skipping", name, done["final_step"], stage_dir)
        saved = done.get("evals", {})
        missing = [n for n in spec.evals.names if n not in saved]
        if missing:  # evaluations asked for since the stage finished
            new = _evaluate(spec, params, done["final_step"], eval_cache, missing)
            _append_evals(stage_dir, new)
            saved = dict(saved, **new)
            if distributed.is_main_process():
                workdir_lib.write_json(done_path, dict(done, evals=saved))
        evals = {n: saved[n] for n in spec.evals.names}
        return StageResult(
            name, params, cfg, done["final_step"], done.get("final_metrics", {}), "skipped", 0.0, evals=evals
        )

    stage_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process():
        workdir_lib.write_text(stage_dir / "model_config.json", cfg.to_json())
        if not spec.data.synthetic:
            tokenizer_files.write_tokenizer(stage_dir / tokenizer_files.TOKENIZER_DIR, *_tokenizer_source(spec))
    num_steps = hp.num_steps
    _check_divisible(hp.batch_size // hp.microbatches, mesh, f"config.{name}.batch_size / microbatches")

    # --- Input pipeline: one iterator, its layout gives the step's batch shapes -----------------------
    iterator = batches_lib.make_train_iterator(
        spec, process_index=jax.process_index(), process_count=jax.process_count()
    )
    layout = batches_lib.global_layout(spec, iterator)
    example = batches_lib.step_batch_spec(spec, layout)
    # The resolved mixture (rates, sizes, expected epochs): said at start-up and kept beside the checkpoints
    # (W/<stage>/mixture.json; each checkpoint's data state carries it too).
    mixture = batches_lib.mixture_report(spec, iterator)
    if mixture is not None and distributed.is_main_process():
        print(batches_lib.format_mixture(name, mixture), flush=True)
        workdir_lib.write_json(stage_dir / "mixture.json", {"stage": name, "sources": mixture})
    batch_sh = _batch_shardings(mesh, example)

    # --- Model, optimizer, state shardings --------------------------------------------------------
    optimizer = optim.make_optimizer(hp, num_steps)
    schedule = optim.learning_rate_schedule(hp, num_steps)
    _, param_sh = trainable_params(cfg, mesh, rules)
    abstract_state = abstract_train_state(cfg, optimizer, spec.seed)
    state_sh = state_shardings(abstract_state, param_sh, mesh)

    # --- Restore or initialise ----------------------------------------------------------------------
    ckpt = Checkpointer(stage_dir / "checkpoints", keep=spec.checkpoint_keep, async_save=spec.checkpoint_async)
    ckpt, restored = _restore_or_refuse(ckpt, _with_sharding(abstract_state, state_sh), spec, stage_dir)
    needs_reference = hp.frozen_reference or hp.precomputed_reference
    start_params = None
    if base is not None:  # LoRA: the reference is the base itself (adapters off), never a copy
        start_params = base
    elif restored is None or needs_reference:
        _, start_params = initial_params(spec, workdir)

    # --- Reference model (DPO / IPO) --------------------------------------------------------------------
    # Precomputed: one pass over the stage's batches from its start, before the iterator moves to a
    # checkpoint's position; the iterator is rewound to the start after it.
    ref_params, ref_table = None, None
    if hp.precomputed_reference:
        layout_sh = _batch_shardings(mesh, layout.spec())  # the reference pass's batches: no ref_logps yet
        ref_table = _precompute_reference(spec, start_params, iterator, stage_dir, layout_sh)
    elif hp.frozen_reference:
        ref_params = start_params

    if restored is not None:
        start_step, state, data_state, saved_config = restored
        _warn_config_changes(saved_config, config_lib.to_dict(config), name)
        try:
            iterator.set_state(distributed.data_state_from_checkpoint(data_state))
        except ValueError as e:
            raise TrainingError(f"{name}: cannot resume the data iterator from step {start_step}: {e}") from e
        log.info("%s: resumed from step %d", name, start_step)
    else:
        start_step = 0
        init = _cached(
            ("init_state", cfg, hp, spec.seed, mesh, rules),
            lambda: jax.jit(
                lambda p: step_lib.init_state(p, optimizer, jax.random.key(spec.seed)), out_shardings=state_sh
            ),
        )
        if base is not None:
            trainable = initial_adapters(spec, workdir)
        else:  # the state gets its own copy: `start_params` may still serve as the frozen reference
            trainable = jax.tree.map(jnp.copy, start_params) if needs_reference else start_params
        with use_rules(mesh, rules):
            state = init(trainable)
    start_params = None
    frozen = base if base is not None else ref_params  # the step's third argument

    def full_params(st):  # what evaluations and the caller see: base + adapters with LoRA
        return st["params"] if base is None else lora_lib.merge(base, st["params"])

    # --- Update step ---------------------------------------------------------------------------------
    jitted = jitted_train_step(spec, example, frozen_reference=ref_params is not None)

    # --- Metrics: FLOPs and tokens of the rows the step actually runs ------------------------------------
    flops_per_step = metrics_lib.train_flops_per_step(cfg, layout.rows, layout.row_len, ref_params is not None)
    tokens_per_step = layout.rows * layout.row_len
    peak, peak_source = metrics_lib.peak_flops_per_device(spec.peak_tflops, mesh.devices.flat[0], cfg.dtype)
    peak_total = peak * mesh.size if peak else None
    log.info(
        "%s: %d rows x %d tokens per step (%s), %.3g TFLOP per step; MFU against %s%s",
        name, layout.rows, layout.row_len, type(layout).__name__, flops_per_step / 1e12,
        peak_source, f" = {peak / 1e12:.3g} TFLOP/s per device" if peak else "",
    )  # fmt: skip
    writer = metrics_lib.MetricsWriter(stage_dir, resume_step=start_step) if distributed.is_main_process() else None

    # --- Train loop -------------------------------------------------------------------------------------
    config_json = config_lib.to_dict(config)
    every = spec.checkpoint_every
    bar = tqdm(
        total=num_steps,
        initial=start_step,
        desc=name,
        unit="step",
        disable=not progress or not distributed.is_main_process(),
        dynamic_ncols=True,
    )
    last_metrics: dict = {}
    stopped = "done"
    step_num = start_step
    t_prev = time.perf_counter()
    try:
        with use_rules(mesh, rules):
            while step_num < num_steps:
                batch = next(iterator)
                if ref_table is not None:
                    batch = dict(batch, ref_logps=ref_table[step_num])
                device_batch = _to_device(batch, batch_sh)
                if frozen is not None:
                    state, metrics = jitted(state, device_batch, frozen)
                else:
                    state, metrics = jitted(state, device_batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                step_num += 1
                now = time.perf_counter()
                dt, t_prev = now - t_prev, now
                metrics["learning_rate"] = float(schedule(step_num - 1))
                nonfinite = guard.nonfinite_reason(metrics)
                if nonfinite:
                    if writer:
                        writer.write(step_num, metrics)  # NaN/Inf as null: the curves show where it broke
                    ckpt.wait()
                    raise NonFiniteLossError(
                        guard.stop_message(name, step_num, nonfinite, ckpt.latest_step(), ckpt.directory)
                    )
                metrics["step_seconds"] = dt
                if step_num > start_step + 1:  # the first step of a (re)start includes compilation
                    metrics |= metrics_lib.throughput(flops_per_step, tokens_per_step, dt, peak_total)
                last_metrics = metrics
                if step_num % spec.log_every == 0 or step_num == num_steps:
                    if writer:
                        writer.write(step_num, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['learning_rate']:.2e}", refresh=False)
                bar.update(1)
                if spec.throttle_seconds:
                    time.sleep(spec.throttle_seconds)
                stop_now = distributed.any_process(stop_flag is not None and stop_flag.requested)
                if step_num % every == 0 or step_num == num_steps or stop_now:
                    ckpt.save(step_num, state, distributed.data_state_for_checkpoint(iterator.get_state()), config_json)
                if stop_now:
                    stopped = "sigterm"
                    break
                if spec.evals.every_steps and step_num % spec.evals.every_steps == 0 and step_num < num_steps:
                    _append_evals(stage_dir, _evaluate(spec, full_params(state), step_num, eval_cache))
                    t_prev = time.perf_counter()  # the evaluation is not part of the next step's time
        ckpt.wait()
    finally:
        bar.close()
        if writer:
            writer.close()
        ckpt.close()

    evals = {}
    if stopped == "done" and spec.evals.names:
        evals = _evaluate(spec, full_params(state), step_num, eval_cache)
        _append_evals(stage_dir, evals)
    wall = time.perf_counter() - t_start
    if stopped == "done":
        done = {
            "final_step": step_num,
            "final_metrics": metrics_lib.json_safe(last_metrics),
            "wall_seconds": wall,
            "peak_flops_per_device": {"value": peak, "source": peak_source},
            "evals": evals,
        }
        if distributed.is_main_process():
            workdir_lib.write_json(done_path, done)
        distributed.barrier(f"{name}_done")  # the next stage reads DONE.json on every process
    compiles = jitted._cache_size() if hasattr(jitted, "_cache_size") else -1
    return StageResult(name, full_params(state), cfg, step_num, last_metrics, stopped, wall, compiles, evals)


def _warn_config_changes(saved: dict, now: dict, stage: str) -> None:
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out |= flat(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(saved), flat(now)
    ignore = {"fresh", "throttle_seconds", "log_every"}
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in ignore)
    if changed:
        log.warning("%s: resuming with config changes since the checkpoint: %s", stage, ", ".join(changed[:12]))


# ------------------------------------------------------------------------------------------------
# All stages
# ------------------------------------------------------------------------------------------------


def train(config, workdir, *, progress: bool = True) -> dict[str, StageResult]:
    """Run `config.stages` in order in `workdir`; a rerun of the same command continues where it stopped.

    `config.evals` (e.g. ("heldout_pref_accuracy",)) are run at the end of every stage (and every
    `config.eval_every_steps`): `results[stage_name].evals`, `W/<stage>/evals.jsonl`."""
    config_lib.validate(config)
    specs = [describe(config, name) for name in config_lib.stages_of(config)]
    evals_lib.check_names(specs[0].evals.names)
    workdir = workdir_lib.resolve(workdir)  # a local directory or gs://bucket/run
    workdir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process():
        workdir_lib.write_json(workdir / "config.json", config_lib.to_dict(config))
    results: dict[str, StageResult] = {}
    eval_cache: dict = {}  # jitted evaluation functions shared by the stages
    with _StopFlag() as stop:
        for spec in specs:
            result = run_stage(config, spec, workdir, progress=progress, stop_flag=stop, eval_cache=eval_cache)
            results[spec.stage_name] = result
            if result.stopped == "sigterm":
                break
    records = {sp.stage_name: metrics_lib.read_jsonl(workdir / sp.stage_name / "metrics.jsonl") for sp in specs}
    if distributed.is_main_process():
        metrics_lib.plot_curves(
            {k: v for k, v in records.items() if v}, workdir / "curves.png", title=str(workdir.name)
        )
    return results
