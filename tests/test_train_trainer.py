"""The trainer end to end on a micro model: compile count, exact resume after SIGKILL and SIGTERM,
corrupted-checkpoint fallback, NaN stop, reference models, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from oyster_jax import main as main_lib
from oyster_jax.data import seed
from oyster_jax.models.config import ConfigError
from oyster_jax.train import NonFiniteLossError, WorkdirMismatchError, train
from oyster_jax.train import config as config_lib
from oyster_jax.train.batches import DataError
from tests import tolerances as tol

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT = REPO / "configs" / "experiments" / "tiny_csa.py"

# A ~30k-parameter Qwen3 on random tokens: every trainer feature, a few seconds per run.
MICRO = {
    "model.vocab_size": "256",
    "model.hidden_size": "32",
    "model.intermediate_size": "64",
    "model.num_layers": "2",
    "model.num_heads": "2",
    "model.num_kv_heads": "1",
    "model.head_dim": "16",
    "synthetic_data": "true",
    "data.seq_len": "32",
    "data.pref_seq_len": "32",
    "data.pref_shared_len": "48",  # synthetic pairs: 16 prompt + 16 + 16 completion tokens
    "sft.batch_size": "4",
    "sft.warmup_steps": "2",
    "sft.learning_rate": "0.01",
    "pref.batch_size": "2",
    "pref.warmup_steps": "1",
    "pref.learning_rate": "0.005",
    "peak_tflops": "1.0",
    "checkpoint.every_steps": "2",
    "checkpoint.keep": "10",
}


def micro_config(**extra):
    return main_lib.build_config(str(EXPERIMENT), MICRO | {k: str(v) for k, v in extra.items()})


def _params_flat(params):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def _assert_params_equal(a, b, atol=tol.RESUME_PARAMS):
    fa, fb = _params_flat(a), _params_flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=0, atol=atol, err_msg=k)


def _final_params(workdir, stage):
    """Params of the newest checkpoint of `stage`, restored on one device."""
    from oyster_jax import convert

    _, params = convert.load_model(pathlib.Path(workdir) / stage)
    return params


def test_one_compile_per_run(tmp_path):
    events = []

    def listener(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        counts = []
        for steps in (3, 6):
            events.clear()
            results = train(
                micro_config(**{"stages": "sft", "sft.num_steps": steps}), tmp_path / f"run{steps}", progress=False
            )
            assert results["sft"].step_compiles == 1
            counts.append(len(events))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # The second run (6 steps) compiles only what depends on its schedule (step, state init): fewer programs
    # than steps, and no more than the 3-step run that also paid for one-time compilations.
    assert counts[1] < 6 and counts[1] <= counts[0], counts


def test_chained_sft_then_orpo_writes_metrics_and_curves(tmp_path):
    results = train(micro_config(**{"sft.num_steps": 3, "pref.num_steps": 3}), tmp_path, progress=False)
    assert results["sft"].final_step == 3 and results["pref"].final_step == 3
    pref = [json.loads(line) for line in (tmp_path / "pref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in pref] == [1, 2, 3]
    for key in (
        "loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_s",
        "tflops_per_s",
        "mfu",
        "nll_loss",
        "log_odds_ratio",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
    ):
        assert key in pref[-1], key
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert list((tmp_path / "sft" / "tensorboard").glob("events.out.tfevents.*"))
    # The config is saved beside every checkpoint.
    for step_dir in (tmp_path / "pref" / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            assert (step_dir / "config").exists()
    # A rerun finds both stages done and trains nothing.
    again = train(micro_config(**{"sft.num_steps": 3, "pref.num_steps": 3}), tmp_path, progress=False)
    assert again["sft"].stopped == "skipped" and again["pref"].stopped == "skipped"


def _cli(workdir, *extra, **overrides):
    args = [
        sys.executable,
        "-m",
        "oyster_jax.main",
        "--config",
        str(EXPERIMENT),
        "--workdir",
        str(workdir),
        "--no_progress",
    ]
    args += [f"--config.{k}={v}" for k, v in (MICRO | overrides).items()]
    return args + list(extra)


def _env():
    # The runs inherit the test run's persistent compilation cache (tests/conftest.py): the restarted runs
    # reuse the first run's programs.
    return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def _wait_for_step(ckpt_dir: pathlib.Path, step: int, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (ckpt_dir / str(step)).is_dir():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc={proc.returncode}) before checkpoint {step}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"checkpoint {step} never appeared")


def test_resume_after_sigkill_and_sigterm_equals_uninterrupted(tmp_path):
    # The signals are sent once a checkpoint exists, so they land mid-run however slow the machine is, as long
    # as the run has steps left: after step 6 it still has 10 steps of at least 1 s each (the throttle).
    common = {"stages": "sft", "sft.num_steps": "16", "throttle_seconds": "1.0"}
    env = _env()
    reference = subprocess.run(_cli(tmp_path / "ref", **common), env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    # SIGKILL right after the step-4 checkpoint is committed, then rerun the same command.
    work = tmp_path / "killed"
    proc = subprocess.Popen(_cli(work, **common), env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_step(work / "sft" / "checkpoints", 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / "sft" / "DONE.json").exists()
    # SIGTERM during the rerun: it saves the step it is on and exits with 143.
    proc = subprocess.Popen(_cli(work, **common), env=env, stderr=subprocess.PIPE, text=True)
    _wait_for_step(work / "sft" / "checkpoints", 6, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "resumed from step" in err
    finish = subprocess.run(_cli(work, **common), env=env, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    _assert_params_equal(_final_params(work, "sft"), _final_params(tmp_path / "ref", "sft"))
    steps = [json.loads(line)["step"] for line in (work / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))  # the redone steps replaced the killed run's lines


def test_corrupted_latest_checkpoint_falls_back_with_warning(tmp_path, caplog):
    cfg = micro_config(**{"stages": "sft", "sft.num_steps": 6})
    uninterrupted = train(cfg, tmp_path, progress=False)["sft"].params
    (tmp_path / "sft" / "DONE.json").unlink()  # pretend the run died right after its step-6 save...
    for f in (tmp_path / "sft" / "checkpoints" / "6" / "params").rglob("*"):  # ...and the save was torn
        if f.is_file():
            f.write_bytes(b"\0garbage")
    with caplog.at_level("INFO"):
        resumed = train(cfg, tmp_path, progress=False)
    assert any("could not be restored" in r.getMessage() and "step 6" in r.getMessage() for r in caplog.records)
    assert any("resumed from step 4" in r.getMessage() for r in caplog.records)
    assert list((tmp_path / "sft" / "checkpoints.corrupt").iterdir())  # moved aside, not deleted
    _assert_params_equal(resumed["sft"].params, uninterrupted)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
    # Step 1 runs at learning rate 0 (warmup); step 2's update at an absurd rate overflows the weights, which
    # the finite-state check catches before that step is saved (its loss, computed before the update, is finite).
    cfg = micro_config(
        **{
            "stages": "sft",
            "sft.num_steps": 6,
            "sft.learning_rate": 1e30,
            "sft.warmup_steps": 1,
            "sft.grad_clip": 0.0,
            "checkpoint.every_steps": 1,
        }
    )
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+)") as info:
        train(cfg, tmp_path, progress=False)
    bad_step = int(__import__("re").search(r"at step (\d+)", str(info.value)).group(1))
    steps = sorted(int(p.name) for p in (tmp_path / "sft" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) == bad_step - 1  # the bad step was never saved
    assert not (tmp_path / "sft" / "DONE.json").exists()


@pytest.mark.parametrize("loss", ["dpo"])
def test_precomputed_reference_equals_frozen_reference(tmp_path, loss):
    runs = {}
    for reference in ("frozen", "precomputed"):
        cfg = micro_config(**{"stages": "pref", "pref.num_steps": 3, "pref.loss": loss, "pref.reference": reference})
        runs[reference] = train(cfg, tmp_path / reference, progress=False)["pref"]
    assert runs["frozen"].final_metrics["rewards/margins"] != 0.0
    # Rewards are beta x differences of summed completion log-probs of magnitude ~1e3, whose float32 spacing
    # is 6e-5: two differently compiled graphs (reference inside the step vs its own jit) may differ by a few
    # ulps there, i.e. ~1e-5 in a reward. A wrong reference moves the rewards by orders of magnitude more.
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        np.testing.assert_allclose(
            runs["frozen"].final_metrics[key], runs["precomputed"].final_metrics[key], rtol=1e-5, atol=2e-5
        )
    _assert_params_equal(runs["frozen"].params, runs["precomputed"].params, atol=1e-5)


def test_unknown_config_key_names_close_matches():
    with pytest.raises(ConfigError, match=r"--config\.sft\.learnig_rate.*--config\.sft\.learning_rate"):
        micro_config(**{"sft.learnig_rate": 1e-3})
    with pytest.raises(ConfigError, match=r"--config\.sedd.*--config\.seed"):
        micro_config(sedd=1)
    with pytest.raises(ConfigError, match="expected an integer"):
        micro_config(**{"sft.num_steps": "many"})


def test_cli_reports_bad_key_without_traceback(tmp_path):
    out = subprocess.run(_cli(tmp_path, **{"sft.batch_sizee": "3"}), env=_env(), capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown config key --config.sft.batch_sizee" in out.stderr and "--config.sft.batch_size" in out.stderr
    assert "Traceback" not in out.stderr


def test_dataset_smaller_than_one_batch_is_a_clear_error(tmp_path):
    record = json.loads(seed.path("pref_train").read_text().splitlines()[0])
    small = tmp_path / "two_pairs.jsonl"
    small.write_text("\n".join(json.dumps(dict(record, id=f"p{i}")) for i in range(2)) + "\n")
    cfg = micro_config(
        **{
            "stages": "pref",
            "synthetic_data": False,
            "model.vocab_size": 4096,
            "data.pref_task": str(small),
            "pref.batch_size": 4,
            "data.pref_seq_len": 256,
        }
    )
    with pytest.raises(DataError, match=r"2 preference pairs, fewer than one batch \(config.pref.batch_size=4"):
        train(cfg, tmp_path / "w", progress=False)


def test_workdir_of_another_model_is_refused_unless_fresh(tmp_path):
    train(micro_config(**{"stages": "sft", "sft.num_steps": 2}), tmp_path, progress=False)
    bigger = {"stages": "sft", "sft.num_steps": 2, "model.hidden_size": 48}
    with pytest.raises(WorkdirMismatchError, match=r"hidden_size: checkpoint 32 vs config 48.*--config.fresh=true"):
        train(micro_config(**bigger), tmp_path, progress=False)
    result = train(micro_config(**bigger, fresh=True), tmp_path, progress=False)
    assert result["sft"].final_step == 2
    assert list(tmp_path.glob("sft.old-*"))  # the other model's checkpoints were moved aside, not deleted


def test_config_roundtrip_is_json():
    d = config_lib.to_dict(micro_config())
    assert json.loads(json.dumps(d)) == d


def test_mixture_is_printed_at_start_up_and_saved_beside_the_checkpoints(tmp_path, capsys):
    chats = tmp_path / "chats.jsonl"
    turn = "Tell me about bread baking at home, step by step."
    records = [
        {"messages": [{"role": "user", "content": f"{turn} {i}"}, {"role": "assistant", "content": "Knead."}]}
        for i in range(12)
    ]
    chats.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    mixture = json.dumps({str(chats): 0.85, "oyster_seed_general": 0.15})
    cfg = micro_config(
        **{
            "stages": "sft",
            "synthetic_data": False,
            "model.vocab_size": 4096,
            "data.sft_mixture": mixture,
            "sft.num_steps": 2,
        }
    )
    train(cfg, tmp_path / "w", progress=False)
    saved = json.loads((tmp_path / "w" / "sft" / "mixture.json").read_text())
    assert [(m["source"], round(m["rate"], 6), m["examples"]) for m in saved["sources"]][0] == (str(chats), 0.85, 12)
    out = capsys.readouterr().out
    assert "sft: data mixture (2 sources):" in out and "85.0%" in out and "oyster_seed_general" in out
