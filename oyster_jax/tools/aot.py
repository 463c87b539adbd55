"""Ahead-of-time compile of the trainer's own train step for a mesh you may not have, and the memory it needs
on each device: the whole train state (params + optimizer state), the batch, and XLA's temporaries.

    python -m oyster_jax.tools.aot --config configs/experiments/qwen3_14b_sft.py --mesh data=1,fsdp=4,tensor=2 \\
        [--stage sft] [--config.sft.batch_size=8 --config.data.seq_len=2048 ...]

The program compiled is the one `train()` runs (`trainer.aot_compile_train_step`: `train/step.py`'s step
jitted with the trainer's shardings and the state donated), from abstract inputs only: no weights, no data,
no accelerator. On a CPU host with fewer devices than the mesh, fake CPU devices are created (XLA_FLAGS,
set before JAX starts its backends).

Compiled here on CPU, the step runs the math a TPU or GPU would (`model.math_impl=plain`), with the plain XLA
attention (`model.attention_impl=xla`: materialised scores, so temporaries are an upper bound of what the
flash kernel needs); pass `--config.model.attention_impl=...` or `--config.model.math_impl=...` to change that.
Exit codes: 0 compiled; 2 bad config, or a mesh this process cannot build.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax

from oyster_jax import cli
from oyster_jax.models.config import ConfigError
from oyster_jax.sharding import parse_mesh_spec
from oyster_jax.train import config as config_lib
from oyster_jax.train import trainer

GIB = 2.0**-30
# What a TPU / GPU run computes, as far as a CPU can compile it (see the module docstring).
ACCELERATOR_MATH = {"model.math_impl": "plain", "model.attention_impl": "xla"}
MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")


def _ensure_devices(n: int) -> None:
    """Ask XLA for `n` fake CPU devices; effective only before JAX has started its backends."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """Our flags plus every `--config.a.b=value` override."""
    ap = cli.ArgumentParser(
        prog="python -m oyster_jax.tools.aot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, help="configs/experiments/<exp>.py")
    ap.add_argument("--mesh", default="", help="config.mesh for this compile, e.g. data=1,fsdp=4,tensor=2")
    ap.add_argument("--stage", default="", help="sft | pref (default: the config's last stage)")
    args, rest = ap.parse_known_args(argv)
    overrides = dict(ACCELERATOR_MATH)
    for arg in rest:
        key, eq, value = arg.removeprefix("--config.").partition("=")
        if not arg.startswith("--config.") or not eq:
            ap.error(f"unrecognised argument {arg!r} (overrides are --config.key=value)")
        overrides[key] = value
    if args.mesh:
        overrides["mesh"] = args.mesh
    return args, overrides


def per_device_bytes(compiled) -> dict[str, int]:
    """Bytes one device holds of each input of the compiled step: the train state's `params`, `opt_state` and
    the rest (step, rng), and the `batch` (the largest shard of each array, as XLA lays them out)."""
    (state_info, batch_info), _ = compiled.args_info
    (state_sh, batch_sh), _ = compiled.input_shardings

    def total(infos, shardings):
        def nbytes(sh, a):  # no sharding: an input the step never reads, pruned from the program
            return 0 if sh is None else math.prod(sh.shard_shape(a.shape)) * a.dtype.itemsize

        return sum(jax.tree.leaves(jax.tree.map(nbytes, shardings, infos, is_leaf=lambda x: x is None)))

    out = {part: total(state_info[part], state_sh[part]) for part in ("params", "opt_state")}
    rest = [k for k in state_info if k not in out]
    out["state_other"] = total([state_info[k] for k in rest], [state_sh[k] for k in rest])
    out["batch"] = total(batch_info, batch_sh)
    out["state_donated"] = all(a.donated for a in jax.tree.leaves(state_info))
    return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def report(config, stage: str, compiled, seconds: float) -> str:
    cfg = config_lib.model_config(config)
    s = config[stage]
    mesh = dict(trainer.mesh_from_config(config.mesh).shape)
    mem = compiled.memory_analysis()
    b = per_device_bytes(compiled)
    state = b["params"] + b["opt_state"] + b["state_other"]
    peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    lines = [
        f"{stage}: {_count(cfg.num_params())} params, mesh {mesh}, {config.sharding} rules; "
        f"batch {s.batch_size} {'pairs' if stage == 'pref' else 'rows'} in {s.microbatches} microbatch(es), "
        f"{cfg.dtype} compute, {cfg.param_dtype} params, "
        f"remat {cfg.remat_policy}, attention {cfg.attention_impl}, math {cfg.math_impl}",
        f"compiled the trainer's train step in {seconds:.1f}s; per device:",
        f"  train state     {state * GIB:10.3f} GiB  (params {b['params'] * GIB:.3f} + optimizer state "
        f"{b['opt_state'] * GIB:.3f} + step/rng {b['state_other'] * GIB:.6f}; donated: {b['state_donated']})",
        f"  batch           {b['batch'] * GIB * 1024:10.3f} MiB",
        f"  temporaries     {mem.temp_size_in_bytes * GIB:10.3f} GiB",
        f"  peak (approx.)  {peak * GIB:10.3f} GiB  (arguments + temporaries + outputs not aliased to arguments)",
        "XLA memory analysis, per device:",
    ]
    lines += [f"  {field:32s} {getattr(mem, field) * GIB:10.3f} GiB" for field in MEMORY_FIELDS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_lib.load_experiment(args.config)
        config_lib.apply_overrides(config, overrides)
        config_lib.validate(config)
        stage = args.stage or config_lib.stages_of(config)[-1]
        if stage not in config_lib.stages_of(config):
            raise ConfigError(f"--stage={stage!r}: the config's stages are {config.stages!r}")
        need = math.prod(n for n in parse_mesh_spec(config.mesh).values() if n > 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _ensure_devices(need)
    if jax.device_count() < need:
        print(
            f"error: mesh {config.mesh} needs {need} devices and this process has {jax.device_count()} (JAX had "
            f"started before XLA_FLAGS=--xla_force_host_platform_device_count={need} could apply)",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    try:
        compiled = trainer.aot_compile_train_step(config, stage)
    except trainer.TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.config}: " + report(config, stage, compiled, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
