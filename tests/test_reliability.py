"""Fault injection: every guarantee of docs/reliability.md, each checked for its exit code, a message that
names the right place (step, file, line, field, key, tensor), and that nothing saved before was lost."""

import json
import math
import pathlib
import signal
import struct
import subprocess
import time

import jax
import numpy as np
import pytest

from oyster_jax import convert, models
from oyster_jax import main as main_lib
from oyster_jax.convert import hf_to_orbax, orbax_to_hf
from oyster_jax.csa import lingo_bp
from oyster_jax.data import seed
from oyster_jax.train import config as config_lib
from oyster_jax.train import guard, optim, train, trainer
from oyster_jax.train.checkpoint import Checkpointer
from oyster_jax.train.metrics import plot_curves, read_jsonl
from tests import tolerances as tol
from tests.test_train_trainer import EXPERIMENT, MICRO, _cli, _env, micro_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SFT = {"stages": "sft", "sft.num_steps": 2, "checkpoint.every_steps": 1}
# Step 1 runs at learning rate 0 (warmup), step 2 at 1e30 without clipping: its update overflows the weights
# while its loss (computed before the update) is still finite.
EXPLODES_AT_STEP_2 = {"sft.learning_rate": 1e30, "sft.warmup_steps": 1, "sft.grad_clip": 0.0}


@pytest.fixture
def run_main(capfd, caplog):
    """`python -m oyster_jax.main` in this process: run_main(workdir, **overrides) -> (exit code, stderr + log)."""

    def run(workdir, **overrides) -> tuple[int, str]:
        argv = ["--config", str(EXPERIMENT), "--workdir", str(workdir)]
        argv += [f"--config.{k}={v}" for k, v in (MICRO | {k: str(v) for k, v in overrides.items()}).items()]
        capfd.readouterr()
        caplog.clear()
        with caplog.at_level("INFO"):
            code = main_lib.main(argv)
        return code, capfd.readouterr().err + caplog.text

    return run


def _strict_json_lines(path) -> list[dict]:
    def refuse(token):
        raise ValueError(f"{path}: non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse) for line in pathlib.Path(path).read_text().splitlines()]


def _params_at(step_dir) -> dict:
    """The parameters saved in one trainer checkpoint step, as numpy arrays."""
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer().restore(pathlib.Path(step_dir).absolute() / "params")


def _steps(ckpt_dir) -> list[int]:
    return sorted(int(p.name) for p in pathlib.Path(ckpt_dir).iterdir() if p.name.isdigit())


def _tree_equal(a, b, atol=0.0):
    fa, fb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# Finite state only
# ------------------------------------------------------------------------------------------------


def test_nonfinite_update_is_never_saved_and_the_stop_names_the_last_finite_checkpoint(tmp_path, run_main):
    work = tmp_path / "w"
    code, err = run_main(work, **(SFT | {"sft.num_steps": 4} | EXPLODES_AT_STEP_2))
    assert code == 3, err
    assert "non-finite values at step 2" in err and "last finite checkpoint: step 1 in" in err, err
    ckpts = work / "sft" / "checkpoints"
    assert _steps(ckpts) == [1]  # the exploded step 2 was never written
    params = _params_at(ckpts / "1")
    assert guard.nonfinite_leaves(params) == []
    # metrics.jsonl is strict JSON: the overflowed norm is null, and the curves draw it as a gap.
    records = _strict_json_lines(work / "sft" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["param_norm"] is not None and records[1]["param_norm"] is None
    assert plot_curves({"sft": read_jsonl(work / "sft" / "metrics.jsonl")}, tmp_path / "curves.png").exists()
    # The advised fix works: a sane learning rate (same optimizer otherwise) resumes from step 1 and finishes.
    code, err = run_main(work, **(SFT | {"sft.num_steps": 4} | EXPLODES_AT_STEP_2 | {"sft.learning_rate": 0.01}))
    assert code == 0, err
    assert "resumed from step 1" in err
    assert json.loads((work / "sft" / "DONE.json").read_text())["final_step"] == 4


def test_nonfinite_checkpoint_of_an_older_version_is_skipped_on_resume(tmp_path, caplog):
    cfg = micro_config(**SFT)
    train(cfg, tmp_path, progress=False)
    stage = tmp_path / "sft"
    (stage / "DONE.json").unlink()
    finite_1 = _params_at(stage / "checkpoints" / "1")
    # Step 3 as the trainer without the finite-state check could save it: every parameter NaN.
    ckpt = Checkpointer(stage / "checkpoints", keep=10, async_save=False)
    abstract = trainer.abstract_train_state(config_lib.model_config(cfg), optim.make_optimizer(cfg.sft, 2))
    state, data_state, saved_config = ckpt._restore_step(2, abstract)
    poisoned = dict(state, params=jax.tree.map(lambda x: x * np.nan, state["params"]), step=state["step"] + 1)
    ckpt.save(3, poisoned, data_state, saved_config)
    ckpt.close()
    with caplog.at_level("INFO"):
        result = train(micro_config(**(SFT | {"sft.num_steps": 3})), tmp_path, progress=False)["sft"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("step 3" in m and "non-finite values (NaN/Inf)" in m for m in messages), messages
    assert any("resumed from step 2" in m for m in messages)
    assert [p.name.split("-")[0] for p in (stage / "checkpoints.corrupt").iterdir()] == ["3"]  # moved, kept
    assert result.final_step == 3 and guard.nonfinite_leaves(result.params) == []
    _tree_equal(_params_at(stage / "checkpoints" / "1"), finite_1)  # older steps untouched


def test_metrics_writer_writes_nonfinite_as_null(tmp_path):
    from oyster_jax.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path)
    writer.write(1, {"loss": float("nan"), "grad_norm": float("inf"), "mfu": 0.5, "vec": np.array([1.0, -np.inf])})
    writer.close()
    (record,) = _strict_json_lines(tmp_path / "metrics.jsonl")
    assert record == {"step": 1, "loss": None, "grad_norm": None, "mfu": 0.5, "vec": [1.0, None]}


# ------------------------------------------------------------------------------------------------
# Never silently reset
# ------------------------------------------------------------------------------------------------


def test_workdir_without_model_config_is_refused_until_fresh(tmp_path, run_main):
    train(micro_config(**SFT), tmp_path, progress=False)
    stage = tmp_path / "sft"
    (stage / "model_config.json").unlink()
    (stage / "DONE.json").unlink()
    before = _snapshot(stage)
    for extra in ({}, {"model.hidden_size": 48}):  # the same model or another one: unknown either way
        code, err = run_main(tmp_path, **SFT, **extra)
        assert code == 2, err
        assert f"{stage / 'model_config.json'} is missing" in err and "--config.fresh=true" in err, err
        assert "Traceback" not in err and "Event loop is closed" not in err
        assert _snapshot(stage) == before  # nothing moved, nothing deleted
    code, err = run_main(tmp_path, **SFT, fresh="true", **{"model.hidden_size": 48})
    assert code == 0, err
    (aside,) = tmp_path.glob("sft.old-*")
    assert _snapshot(aside) == before  # the old run is kept, whole, beside the new one


def test_every_checkpoint_broken_is_refused_not_restarted(tmp_path, run_main):
    train(micro_config(**SFT), tmp_path, progress=False)
    stage = tmp_path / "sft"
    (stage / "DONE.json").unlink()
    for f in (stage / "checkpoints").rglob("*"):
        if f.is_file() and "params" in f.parts:
            f.write_bytes(b"\0garbage")
    before = _snapshot(stage)
    code, err = run_main(tmp_path, **SFT)
    assert code == 2, err
    assert "no checkpoint is usable" in err and "step 2:" in err and "step 1:" in err, err
    assert "--config.fresh=true" in err and "Traceback" not in err
    assert _snapshot(stage) == before and not (stage / "checkpoints.corrupt").exists()
    assert not (stage / "DONE.json").exists()


def test_checkpoints_of_another_model_behind_a_matching_model_config_are_named_quietly(tmp_path, run_main):
    train(micro_config(**SFT), tmp_path, progress=False)
    stage = tmp_path / "sft"
    (stage / "DONE.json").unlink()
    saved = json.loads((stage / "model_config.json").read_text())
    (stage / "model_config.json").write_text(json.dumps(dict(saved, hidden_size=48)))  # lies about the model
    code, err = run_main(tmp_path, **SFT, **{"model.hidden_size": 48})
    assert code == 2, err
    assert "parameters of another model" in err and "['embed_tokens'] [256, 32] vs [256, 48]" in err, err
    assert "Event loop is closed" not in err and "Traceback" not in err


def test_truncated_done_json_is_moved_aside_and_rewritten_without_retraining(tmp_path, run_main):
    first = train(micro_config(**SFT), tmp_path, progress=False)["sft"]
    done = tmp_path / "sft" / "DONE.json"
    text = done.read_text()
    done.write_text(text[: len(text) // 2])
    code, err = run_main(tmp_path, **SFT)
    assert code == 0, err
    assert "DONE.json is unreadable" in err and "resumed from step 2" in err, err
    assert json.loads(done.read_text())["final_step"] == 2
    (aside,) = (tmp_path / "sft").glob("DONE.json.corrupt-*")
    assert aside.read_text() == text[: len(text) // 2]
    _tree_equal(convert.load_model(tmp_path / "sft")[1], first.params)


def test_sigkill_during_a_checkpoint_save_loses_nothing(tmp_path):
    """SIGKILL as soon as a save is in flight (its temporary directory exists); the rerun resumes from the
    newest committed step and ends bit-identical to an uninterrupted run."""
    # 12 steps with a 1 s throttle: after step 3 the run has 9 s or more left, so the kill lands mid-run however
    # slowly the polling loop runs on a loaded machine.
    common = {"stages": "sft", "sft.num_steps": "12", "checkpoint.every_steps": "1", "throttle_seconds": "1.0"}
    env = _env()
    reference = subprocess.run(_cli(tmp_path / "ref", **common), env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    work = tmp_path / "killed"
    ckpts = work / "sft" / "checkpoints"
    proc = subprocess.Popen(_cli(work, **common), env=env, stderr=subprocess.DEVNULL)
    committed_before_kill = []
    while proc.poll() is None:
        names = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
        committed = sorted(int(n) for n in names if n.isdigit())
        # A save in flight (Orbax's temporary directory) after one committed step; should the polls never
        # catch one, kill after step 3 is committed, so the test never depends on timing.
        if committed and (any("tmp" in n for n in names) or committed[-1] >= 3):
            committed_before_kill = committed
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (work / "sft" / "DONE.json").exists()
    assert set(committed_before_kill) <= set(_steps(ckpts))  # committed steps survive the kill
    finish = subprocess.run(_cli(work, **common), env=env, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    assert "Event loop is closed" not in finish.stderr
    _tree_equal(convert.load_model(work / "sft")[1], convert.load_model(tmp_path / "ref" / "sft")[1], tol.RESUME_PARAMS)


# ------------------------------------------------------------------------------------------------
# Bad configs: exit 2 naming the key, before anything is written
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("sft.learning_rate", "nan", "config.sft.learning_rate=nan: must be a finite number"),
        ("sft.learning_rate", "inf", "config.sft.learning_rate=inf: must be a finite number"),
        ("sft.learning_rate", "-0.001", "config.sft.learning_rate=-0.001: must be > 0"),
        ("pref.learning_rate", "0", "config.pref.learning_rate=0.0: must be > 0"),
        ("sft.warmup_steps", "-1", "config.sft.warmup_steps=-1: must be >= 0"),
        ("pref.num_steps", "0", "config.pref.num_steps=0: must be >= 1"),
        ("sft.batch_size", "0", "config.sft.batch_size=0: must be >= 1"),
        ("pref.batch_size", "-2", "config.pref.batch_size=-2: must be >= 1"),
        ("sft.microbatches", "3", "config.sft.batch_size=4 is not divisible by config.sft.microbatches=3"),
        ("sft.b2", "1.5", "config.sft.b2=1.5: must be >= 0.0 and < 1.0"),
        ("checkpoint.every_steps", "0", "config.checkpoint.every_steps=0: must be >= 1"),
        ("data.seq_len", "0", "config.data.seq_len=0: must be >= 1"),
        ("mesh", "data=2,fsdp=-1,tensor=-1", "config.mesh='data=2,fsdp=-1,tensor=-1': axis sizes"),
        ("mesh", "data=two", "config.mesh='data=two'"),
        ("mesh", "pipeline=2", "config.mesh='pipeline=2'"),
        ("mesh", "data=0", "config.mesh='data=0': axis sizes must be >= 1"),
        ("mesh", f"data={jax.device_count() + 1},fsdp=1,tensor=1", f"{jax.device_count()} available"),
        ("mesh", "data=1,fsdp=1,tensor=-7", "config.mesh='data=1,fsdp=1,tensor=-7': axis sizes"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, run_main, key, value, message):
    code, err = run_main(tmp_path / "w", **{"stages": "sft", key: value})
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "w" / "sft" / "checkpoints").exists()


def test_init_from_with_wrong_shapes_exits_2_naming_the_directory(tmp_path, run_main):
    cfg = micro_config()
    mc = models.ModelConfig.from_dict(cfg.model.to_dict())
    wide = mc.replace(hidden_size=48)
    ckpt = convert.save_model(tmp_path / "init", wide, models.init_params(wide, jax.random.key(0)))
    (ckpt / "model_config.json").write_text(mc.to_json())  # the config says 32, the arrays are 48 wide
    code, err = run_main(tmp_path / "w", **{"stages": "sft", "init_from": ckpt})
    assert code == 2, err
    assert f"config.init_from={ckpt}" in err and str(ckpt / "params") in err, err
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# Malformed records through the training CLI
# ------------------------------------------------------------------------------------------------


def _sft_record():
    return json.loads(seed.path("sft_train").read_text().splitlines()[0])


def _pref_record():
    return json.loads(seed.path("pref_train").read_text().splitlines()[0])


@pytest.mark.parametrize(
    "kind,mutate,field,reason",
    [
        ("sft", lambda r: r["messages"][-1].update(content="  \n "), "messages[1].content", "empty"),
        ("sft", lambda r: r["messages"][0].update(content="hi \ud800 there"), "messages[0].content", "surrogate"),
        ("sft", lambda r: r["messages"][0].update(content="a <|im_end|> b"), "messages[0].content", "marker"),
        ("pref", lambda r: r["rejected"].update(response=" \t"), "rejected.response", "non-empty"),
    ],
)
def test_malformed_record_exits_2_naming_file_line_field(tmp_path, run_main, kind, mutate, field, reason):
    good = _sft_record() if kind == "sft" else _pref_record()
    bad = json.loads(json.dumps(good))
    mutate(bad)
    path = tmp_path / f"{kind}.jsonl"
    lines = [dict(good, id="ok-0"), dict(bad, id="bad"), dict(good, id="ok-1")]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    task = {"data.sft_task": path} if kind == "sft" else {"data.pref_task": path}
    overrides = {"stages": kind, "synthetic_data": "false", "model.vocab_size": 4096, "data.pref_shared_len": 0}
    overrides |= {f"{kind}.num_steps": 1}  # should the record pass, the run stays short
    code, err = run_main(tmp_path / "w", **overrides, **task, **{"data.pref_seq_len": 256})
    assert code == 2, err
    assert f"{path}:2: field '{field}'" in err and reason in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "w" / kind / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# Converters: broken safetensors, exit 2 naming file and tensor, the previous output kept
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def hf_dir(tmp_path):
    cfg = models.ModelConfig.from_dict(micro_config().model.to_dict())
    params = models.init_params(cfg, jax.random.key(0))
    return convert.to_hf(cfg, params, tmp_path / "hf", max_shard_bytes=1 << 16, tokenizer=False)  # weights only


def _run_cli(main, argv, capfd) -> tuple[int, str]:
    capfd.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capfd.readouterr().err


def _last_tensor(path: pathlib.Path) -> str:
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8 : 8 + n])
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def test_truncated_safetensors_exits_2_naming_file_and_tensor(hf_dir, tmp_path, capfd):
    out = tmp_path / "orbax"
    assert hf_to_orbax.main(["--hf_dir", str(hf_dir), "--out", str(out)]) == 0
    kept = _snapshot(out)
    shard = sorted(hf_dir.glob("*.safetensors"))[-1]
    victim = _last_tensor(shard)
    shard.write_bytes(shard.read_bytes()[:-10])
    code, err = _run_cli(hf_to_orbax.main, ["--hf_dir", str(hf_dir), "--out", str(out)], capfd)
    assert code == 2, err
    assert str(shard) in err and victim in err, err
    assert "Traceback" not in err
    assert _snapshot(out) == kept  # the earlier conversion is untouched


def test_absurd_safetensors_header_length_exits_2_naming_the_file(hf_dir, tmp_path, capfd):
    shard = sorted(hf_dir.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", 1 << 62) + data[8:])
    code, err = _run_cli(hf_to_orbax.main, ["--hf_dir", str(hf_dir), "--out", str(tmp_path / "o")], capfd)
    assert code == 2, err
    assert str(shard) in err and "Traceback" not in err and "MemoryError" not in err, err
    assert not (tmp_path / "o").exists()


def test_converter_bad_mesh_and_missing_checkpoint_exit_2(hf_dir, tmp_path, capfd):
    code, err = _run_cli(
        hf_to_orbax.main, ["--hf_dir", str(hf_dir), "--out", str(tmp_path / "o"), "--mesh", "data=x"], capfd
    )
    assert code == 2 and "--mesh data=x" in err and "Traceback" not in err, err
    code, err = _run_cli(orbax_to_hf.main, ["--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "h")], capfd)
    assert code == 2 and str(tmp_path / "nothing") in err and "Traceback" not in err, err


def test_truncated_model_config_exits_2_naming_the_file(hf_dir, tmp_path, capfd):
    out = tmp_path / "orbax"
    assert hf_to_orbax.main(["--hf_dir", str(hf_dir), "--out", str(out)]) == 0
    (out / "model_config.json").write_text('{"arch": "qwe')
    code, err = _run_cli(orbax_to_hf.main, ["--ckpt", str(out), "--out", str(tmp_path / "h")], capfd)
    assert code == 2 and f"{out / 'model_config.json'}: unreadable" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------
# Lingo-BP arguments checked up front
# ------------------------------------------------------------------------------------------------


def test_lingo_bp_unknown_sampling_key_and_zero_limit_exit_2(tmp_path, capfd):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "q1", "query": "hello"}) + "\n")
    out = tmp_path / "o"
    local = [
        "--input",
        str(queries),
        "--policy",
        f"local:{tmp_path / 'ckpt'}",
        "--judge",
        "openai:http://127.0.0.1:9#m",
    ]
    cases = [
        (["--policy_sampling", "foo=1"], "--policy_sampling: unknown sampling key 'foo' for a local backend"),
        (["--judge_sampling", "stream=true"], "--judge_sampling: 'stream' is part of the request itself"),
        (["--limit", "0"], "--limit 0: must be >= 1"),
    ]
    for extra, message in cases:
        capfd.readouterr()
        assert lingo_bp.main(local + ["--out", str(out)] + extra) == 2
        err = capfd.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not out.exists()  # refused before any request or file


def test_atomic_write_json_refuses_nonfinite_without_touching_the_old_file(tmp_path):
    from oyster_jax.train import workdir as workdir_lib

    path = tmp_path / "DONE.json"
    workdir_lib.write_json(path, {"final_step": 3})
    with pytest.raises(ValueError):
        workdir_lib.write_json(path, {"final_step": 4, "loss": math.nan})
    assert json.loads(path.read_text()) == {"final_step": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["DONE.json"]  # no temporary file left behind
