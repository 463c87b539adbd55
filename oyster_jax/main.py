"""Train: `python -m oyster_jax.main --config EXPERIMENT --workdir W [--config.key=value ...]`.

EXPERIMENT is a bundled config by name (`tiny_csa`: configs/experiments/tiny_csa.py, shipped in the
package) or the path of a config file. Runs the stages in `config.stages` ("sft", "pref" or "sft,pref")
in W; rerunning the same command after a crash, a SIGKILL or a SIGTERM continues from the newest good
checkpoint. Examples:

    python -m oyster_jax.main --config tiny_csa --workdir runs/tiny
    python -m oyster_jax.main --config tiny_csa --workdir runs/tiny \\
        --config.stages=pref --config.pref.loss=dpo --config.init_from=runs/tiny/sft
    python -m oyster_jax.main --config configs/experiments/qwen3_14b_sft.py --print_config   # and exit

Exit codes: 0 done; 2 bad config, input or workdir (one line naming the key, file or tensor; --debug adds the
traceback); 3 non-finite loss or state (that step is not saved); 143 stopped by SIGTERM (checkpoint saved).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from oyster_jax import cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import oyster_jax.xla_env  # noqa: E402, F401  (XLA flags, before JAX starts)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """Our flags plus every `--config.a.b=value` (or `--config.a.b value`) override, in order."""
    parser = cli.ArgumentParser(prog="python -m oyster_jax.main", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a bundled experiment (tiny_csa, qwen3_14b_sft, ...) or a .py")
    parser.add_argument("--workdir", help="checkpoints, metrics and plots go here (required unless --print_config)")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm bar (logs only)")
    parser.add_argument("--print_config", action="store_true", help="print the resolved config (JSON) and exit")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a bad-input error too")
    overrides: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            key, eq, value = arg[len("--config.") :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    parser.error(f"{arg}: missing value")
                value = argv[i + 1]
                i += 1
            overrides[key] = value
        else:
            rest.append(arg)
        i += 1
    args = parser.parse_args(rest)
    if args.workdir is None and not args.print_config:
        parser.error("the following arguments are required: --workdir")
    return args, overrides


def build_config(config_path: str, overrides: dict[str, str]):
    from oyster_jax.train import config as config_lib

    config = config_lib.load_experiment(config_path)
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    return config


def print_config(config_path: str, overrides: dict[str, str]) -> int:
    """`--print_config`: the config a run would use (overrides applied, validated), as JSON on stdout."""
    from oyster_jax.models.config import ConfigError
    from oyster_jax.train import config as config_lib

    try:
        config = build_config(config_path, overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(config_lib.to_dict(config), indent=2, sort_keys=True))
    return 0


def _report(error: BaseException, code: int, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exception(error)
    print(f"error: {error}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.print_config:
        return print_config(args.config, overrides)
    from oyster_jax import distributed

    distributed.initialize()  # TPU pod / SLURM / JAX_COORDINATOR_ADDRESS; a no-op on one host
    distributed.setup_logging()  # INFO on process 0, warnings and errors elsewhere
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from oyster_jax.models.config import ConfigError
    from oyster_jax.train import TrainingError, train
    from oyster_jax.train.batches import DataError
    from oyster_jax.train.trainer import NonFiniteLossError

    try:
        config = build_config(args.config, overrides)
        results = train(config, args.workdir, progress=not args.no_progress)
    except (ConfigError, DataError, FileNotFoundError) as e:
        return _report(e, 2, args.debug)
    except NonFiniteLossError as e:
        return _report(e, 3, args.debug)
    except TrainingError as e:
        return _report(e, 2, args.debug)
    for name, r in results.items():
        loss = r.final_metrics.get("loss")
        loss_text = f"{loss:.4f}" if loss is not None else "n/a"
        distributed.print0(
            f"{name}: {r.stopped} at step {r.final_step}, loss {loss_text}, {r.wall_seconds:.0f}s; "
            f"checkpoints in {os.path.join(args.workdir, name, 'checkpoints')}"
        )
    if any(r.stopped == "sigterm" for r in results.values()):
        print("stopped by SIGTERM after saving a checkpoint; rerun the same command to continue", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
