"""The multi-host path on one machine: 2 processes x 4 fake CPU devices (JAX distributed over 127.0.0.1,
gloo CPU collectives), found by `oyster_jax.distributed.initialize()` from JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, run 3 SFT steps of the tiny config through the real entry point
(`oyster_jax.main`, trainer, Orbax checkpoints in one shared workdir), against 1 process x 8 devices fed
the same global batches (tests/multiprocess_worker.py --virtual_shards 2 explains why that is the right
reference).

Checks: the final loss agrees (tolerances.MULTIPROCESS_VS_SINGLE); the processes read disjoint data
shards that together are exactly the single process's data, batch by batch; only process 0 is the main
process; the data positions of all processes survive in one checkpoint item; process 1 writes no
plain files and draws no progress bar.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import tolerances

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
TIMEOUT_S = 300  # generous for a loaded 2-core machine; a hang fails instead of blocking CI
STEPS = 3
MAIN_ARGS = [
    "--config.stages=sft",
    f"--config.sft.num_steps={STEPS}",
    "--config.sft.batch_size=8",  # global rows: 4 per process, 1 per device
    "--config.data.seq_len=128",
    "--config.peak_tflops=1",  # skip the matmul roofline measurement (MFU is not under test)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cluster: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "OYSTER_TPU"))}
    env.update(
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(REPO),
        **cluster,
    )
    return env


def _spawn(out: pathlib.Path, workdir: pathlib.Path, devices: int, cluster: dict, *extra) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (the child owns it; closed when we exit)
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--out", str(out), "--workdir", str(workdir), *extra, "--", *MAIN_ARGS],
        env=_env(devices, cluster),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so cleanup kills everything it started
    )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_workers(tmp) -> dict:
    port = free_port()
    outs = [tmp / "process0.json", tmp / "process1.json", tmp / "single.json"]
    procs = [
        _spawn(
            outs[i],
            tmp / "multi",
            4,
            {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)},
        )
        for i in range(2)
    ]
    procs.append(_spawn(outs[2], tmp / "single", 8, {}, "--virtual_shards", "2"))
    started = time.monotonic()
    try:
        for proc in procs:
            proc.wait(timeout=max(TIMEOUT_S - (time.monotonic() - started), 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers did not finish within {TIMEOUT_S}s; logs in {tmp}")
    finally:
        for proc in procs:
            _kill(proc)
    results = []
    for proc, out in zip(procs, outs):
        log = out.with_suffix(".log").read_text()
        assert proc.returncode == 0 and out.exists(), f"{out.name} failed (rc={proc.returncode}):\n{log[-4000:]}"
        results.append(dict(json.loads(out.read_text()), log=log))
    print(f"multiprocess workers: {time.monotonic() - started:.1f}s wall")
    return {"workers": results[:2], "single": results[2], "tmp": tmp}


# The trainer's share of the multi-host rules (oyster_jax/train/trainer.py): once it uses the
# oyster_jax.distributed helpers, a failure of these checks is an error; until then an expected failure.
TRAINER_IS_MULTIHOST_AWARE = (
    "distributed.data_state_for_checkpoint" in (REPO / "oyster_jax" / "train" / "trainer.py").read_text()
)


def test_two_processes_match_one_process(tmp_path):
    """One run of the three processes (expensive), then every check on it."""
    run = run_workers(tmp_path)
    workers, single = run["workers"], run["single"]

    # The cluster came up: 2 processes x 4 devices = one 8-device mesh; process 0 is the main process.
    assert (single["rc"], single["process_count"], single["global_devices"]) == (0, 1, 8)
    for i, w in enumerate(workers):
        assert w["rc"] == 0, w["log"][-3000:]
        assert (w["process_index"], w["process_count"], w["local_devices"], w["global_devices"]) == (i, 2, 4, 8)
        assert w["is_main_process"] == (i == 0)

    # Same loss as one process: the loss is a global value, so both processes report the same number.
    assert [w["final_step"] for w in workers] == [STEPS, STEPS] and single["final_step"] == STEPS
    assert workers[0]["final_loss"] == workers[1]["final_loss"]
    assert abs(workers[0]["final_loss"] - single["final_loss"]) <= tolerances.MULTIPROCESS_VS_SINGLE

    # Disjoint data shards that together are exactly the single process's data, batch by batch.
    examples = [collections.Counter(map(tuple, w["examples"])) for w in workers]
    assert all(examples), "no examples recorded"
    overlap = set(examples[0]) & set(examples[1])
    assert not overlap, f"both processes read {sorted(overlap)[:5]}"
    assert examples[0] + examples[1] == collections.Counter(map(tuple, single["examples"]))
    assert len(single["batch_parts"]) == STEPS
    assert [list(p) for p in zip(workers[0]["batches"], workers[1]["batches"])] == single["batch_parts"]
    assert workers[0]["batches"][0] != workers[1]["batches"][0]

    # Every process's data position fits in one JSON checkpoint item (distributed.data_state_for_checkpoint).
    for i, w in enumerate(workers):
        saved = w["saved_data_state"]
        assert saved["process_count"] == 2
        assert [s["config"]["shard_index"] for s in saved["processes"]] == [0, 1]
        assert w["data_state_roundtrip"], f"process {i} did not get its own data state back"
    assert workers[0]["saved_data_state"] == workers[1]["saved_data_state"]

    # The trainer's part: plain files, bars and summaries from process 0 only; the checkpoint keeps the
    # data position of every process.
    problems = []
    lines = (tmp_path / "multi" / "sft" / "metrics.jsonl").read_text().splitlines()
    if len(lines) != STEPS:
        problems.append(f"metrics.jsonl has {len(lines)} lines for {STEPS} steps (written by every process)")
    log1 = workers[1]["log"]
    if re.search(r"sft:\s+\d+%\|", log1):
        problems.append("process 1 drew a progress bar")
    if "sft: done" in log1:
        problems.append("process 1 printed the run summary")
    data_item = json.loads((tmp_path / "multi" / "sft" / "checkpoints" / str(STEPS) / "data" / "metadata").read_text())
    if not (isinstance(data_item, dict) and data_item.get("process_count") == 2):
        problems.append("the checkpoint's data item holds process 0's position only")
    if problems and not TRAINER_IS_MULTIHOST_AWARE:
        pytest.xfail("trainer not yet multi-host aware (see the issue-8 report): " + "; ".join(problems))
    assert not problems, problems


_MAX_OVER_PROCESSES = """
import jax
from oyster_jax import distributed
distributed.initialize()
rank = jax.process_index()
print("RESULT", rank, distributed.max_over_processes([5, 11][rank]), distributed.any_process(rank == 1))
"""


def test_collectives_that_size_global_shapes_agree_across_processes(tmp_path):
    """`distributed.max_over_processes` (the shared-prompt row length measured on each process's data shard)
    and `any_process` give every process the same answer."""
    port = free_port()
    procs = []
    for i in range(2):
        cluster = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _MAX_OVER_PROCESSES],
                env=_env(1, cluster),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )  # fmt: skip
        )
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            _kill(proc)
    results = sorted(line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("RESULT"))
    assert results == [["0", "11", "True"], ["1", "11", "True"]], outputs
