"""`make demo`: train the tiny Qwen3 model from scratch on the bundled seed data — SFT, then ORPO — and report.

    python -m oyster_jax.demo --workdir runs/demo [--config.key=value ...]      (WORKDIR=... make demo)

Steps: `train()` runs SFT (configs/experiments/tiny_csa.py) then ORPO, with the held-out preference
accuracy evaluated at the end of each stage (`config.evals`) -> export to a Hugging Face directory with
`convert.to_hf` (and the tokenizer the trainer saved in W/pref/tokenizer) -> load it with `transformers`
(when installed) and compare its logits with ours -> `report.json`, `report.md` and `curves.png` in the workdir.

report.json (nested; `sft.final_loss` is `report["sft"]["final_loss"]`):

    {"sft": {"final_loss", "steps", "wall_seconds"},
     "pref": {"loss", "heldout_accuracy_before", "heldout_accuracy_after", "heldout_pairs", "final_loss",
              "steps", "wall_seconds"},
     "hf_export_dir", "hf_check": {"transformers_loaded", "max_abs_logit_diff"},
     "target": {"accuracy_after_min", "gain_min", "met"}, "wall_seconds"}

Preference accuracy = share of held-out pairs (template families never seen in training) whose chosen
completion has the higher mean per-token log-prob. A rerun of the command continues (or, when both
stages are done, only re-evaluates) from the checkpoints in the workdir.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import oyster_jax.xla_env  # noqa: E402, F401  (XLA flags, before JAX starts)
from oyster_jax.core.files import atomic_write_text

EXPERIMENT = "tiny_csa"  # configs/experiments/tiny_csa.py, bundled as oyster_jax.configs.experiments.tiny_csa
HELDOUT = "heldout_pref_accuracy"  # train.evals: run by train() at the end of each stage
TARGET_ACCURACY = 0.90
TARGET_GAIN = 0.20


def _hf_check(cfg, params, hf_dir: pathlib.Path, tokens) -> dict:
    """Load the export with transformers (if installed) and compare its logits with ours."""
    try:
        import torch
        import transformers
    except ImportError:
        return {"transformers_loaded": False, "reason": "transformers/torch not installed"}
    import numpy as np

    from oyster_jax import models

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        theirs = model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
    ours = np.asarray(models.forward(cfg, params, tokens))
    return {
        "transformers_loaded": True,
        "transformers_version": transformers.__version__,
        "max_abs_logit_diff": float(np.max(np.abs(theirs - ours))),
    }


def _write_markdown(report: dict, workdir: pathlib.Path) -> None:
    p, s = report["pref"], report["sft"]
    verdict = "met" if report["target"]["met"] else "NOT met"
    lines = [
        "# oyster_jax demo: tiny Qwen3, constructive SFT then ORPO",
        "",
        f"Trained from scratch on the bundled seed data in {report['wall_seconds']:.0f} s "
        f"({os.cpu_count()} CPU cores).",
        "",
        "| | value |",
        "|---|---|",
        f"| SFT steps / final loss | {s['steps']} / {s['final_loss']:.4f} |",
        f"| ORPO steps / final loss | {p['steps']} / {p['final_loss']:.4f} |",
        f"| held-out preference accuracy before ORPO | {p['heldout_accuracy_before']:.3f} |",
        f"| held-out preference accuracy after ORPO | {p['heldout_accuracy_after']:.3f} |",
        f"| held-out pairs | {p['heldout_pairs']} |",
        f"| target (after >= {TARGET_ACCURACY}, gain >= {TARGET_GAIN}) | {verdict} |",
        f"| Hugging Face export | `{report['hf_export_dir']}` |",
        f"| transformers load check | {json.dumps(report['hf_check'])} |",
        "",
        "Accuracy: share of held-out pairs whose chosen completion has the higher mean token log-prob.",
        "",
        "![training curves](curves.png)",
        "",
    ]
    atomic_write_text(workdir / "report.md", "\n".join(lines))


def parse_args(argv, *, prog: str, description: str, config: str, workdir: str):
    """(args, --config.key=value overrides) of a demo command line: --workdir, --config and overrides."""
    from oyster_jax import cli

    parser = cli.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--workdir", default=os.environ.get("WORKDIR") or workdir)
    parser.add_argument("--config", default=config, help="experiment config: a bundled name or a .py file")
    rest, overrides = split_overrides(argv, "--config.")
    return parser.parse_args(rest), overrides


def split_overrides(argv: list[str], prefix: str) -> tuple[list[str], dict[str, str]]:
    """(the other arguments, {key: value} of every `PREFIXkey=value` argument) of a command line."""
    rest, overrides = [], {}
    for arg in argv:
        if arg.startswith(prefix) and "=" in arg:
            key, _, value = arg[len(prefix) :].partition("=")
            overrides[key] = value
        else:
            rest.append(arg)
    return rest, overrides


def setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_config(name: str, overrides: dict, *, stages: str = "sft,pref", evals: tuple = ()):
    """The experiment config with overrides, `stages` and the train-time `evals` added; None after printing
    the error (exit code 2)."""
    from oyster_jax.main import build_config
    from oyster_jax.models.config import ConfigError

    try:
        config = build_config(name, overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    with config.unlocked():
        config.stages = stages
        config.evals = tuple(config.evals) + tuple(e for e in evals if e not in config.evals)
    return config


def run_training(config, workdir: pathlib.Path):
    """train() in `workdir` (a rerun continues; finished stages are only loaded): the results, or the exit
    code after printing why (2 bad config or data, 143 stopped by SIGTERM)."""
    from oyster_jax.models.config import ConfigError
    from oyster_jax.train import TrainingError, train
    from oyster_jax.train.batches import DataError

    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workdir / "config.json", json.dumps(json.loads(config.to_json()), indent=2))
    try:
        results = train(config, workdir)
    except (ConfigError, DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if any(r.stopped == "sigterm" for r in results.values()):
        print("stopped by SIGTERM; rerun the same command to continue", file=sys.stderr)
        return 143
    return results


def export_hf(cfg, params, workdir: pathlib.Path) -> pathlib.Path:
    """`convert.to_hf` into W/hf (f32), with the tokenizer the trainer saved for the last stage (W/pref/tokenizer,
    our chat template)."""
    from oyster_jax import convert

    hf_dir = workdir / "hf"
    convert.to_hf(cfg, params, hf_dir, dtype="float32", tokenizer=workdir / "pref" / "tokenizer")
    return hf_dir


def plot_training(workdir: pathlib.Path, title: str) -> pathlib.Path:
    from oyster_jax.train import metrics as metrics_lib

    records = {st: metrics_lib.read_jsonl(workdir / st / "metrics.jsonl") for st in ("sft", "pref")}
    metrics_lib.plot_curves(records, workdir / "curves.png", title=title)
    return workdir / "curves.png"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(
        argv,
        prog="python -m oyster_jax.demo",
        description=__doc__.splitlines()[0],
        config=EXPERIMENT,
        workdir="runs/demo",
    )
    setup_logging()
    t0 = time.perf_counter()
    workdir = pathlib.Path(args.workdir).absolute()
    # Held-out accuracy at the end of each stage (train.evals): before and after ORPO.
    config = load_config(args.config, overrides, evals=(HELDOUT,))
    if config is None:
        return 2
    results = run_training(config, workdir)
    if isinstance(results, int):
        return results
    sft, pref = results["sft"], results["pref"]
    cfg = pref.model_config
    before, after = sft.evals[HELDOUT], pref.evals[HELDOUT]
    print(f"held-out preference accuracy: {before['accuracy']:.3f} after SFT -> {after['accuracy']:.3f} after ORPO")

    # --- Export and check ---------------------------------------------------------------------------
    from oyster_jax import data

    vocab = data.default_vocabulary()
    # The chat turn ends with <|im_end|>: that is what generation must stop on.
    export_cfg = cfg.replace(eos_token_id=vocab.token_to_id("<|im_end|>"), pad_token_id=vocab.pad_id)
    hf_dir = export_hf(export_cfg, pref.params, workdir)
    probe = next(data.make_pref_iterator("oyster_csa_seed_pref", split="test", batch_size=2, seq_len=64, shuffle=False))
    hf_check = _hf_check(cfg, pref.params, hf_dir, probe["tokens"].reshape(-1, probe["tokens"].shape[-1]))

    # --- Report --------------------------------------------------------------------------------------
    plot_training(workdir, "tiny Qwen3: SFT then ORPO")
    met = after["accuracy"] >= TARGET_ACCURACY and after["accuracy"] - before["accuracy"] >= TARGET_GAIN
    report = {
        "sft": {
            "final_loss": sft.final_metrics.get("loss"),
            "steps": sft.final_step,
            "wall_seconds": sft.wall_seconds,
        },
        "pref": {
            "loss": config.pref.loss,
            "heldout_accuracy_before": before["accuracy"],
            "heldout_accuracy_after": after["accuracy"],
            "heldout_pairs": after["pairs"],
            "heldout_mean_logp_before": [before["mean_logp_chosen"], before["mean_logp_rejected"]],
            "heldout_mean_logp_after": [after["mean_logp_chosen"], after["mean_logp_rejected"]],
            "final_loss": pref.final_metrics.get("loss"),
            "steps": pref.final_step,
            "wall_seconds": pref.wall_seconds,
        },
        "hf_export_dir": str(hf_dir),
        "hf_check": hf_check,
        "target": {"accuracy_after_min": TARGET_ACCURACY, "gain_min": TARGET_GAIN, "met": bool(met)},
        "wall_seconds": time.perf_counter() - t0,
    }
    atomic_write_text(workdir / "report.json", json.dumps(report, indent=2))
    _write_markdown(report, workdir)
    print(
        f"demo: SFT loss {report['sft']['final_loss']:.3f}; held-out preference accuracy "
        f"{before['accuracy']:.3f} -> {after['accuracy']:.3f} ({'target met' if met else 'target NOT met'}); "
        f"HF export {hf_dir} ({'loaded by transformers' if hf_check.get('transformers_loaded') else 'not checked'}); "
        f"{report['wall_seconds']:.0f}s. Report: {workdir / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
