"""The multi-host path on one machine: 2 processes x 4 fake CPU devices (JAX distributed, gloo CPU
collectives over 127.0.0.1) against 1 process x 8 devices, same global mesh and batch.

Checks: the per-step SFT losses agree (tolerances.MULTIPROCESS_VS_SINGLE), every process read a
disjoint shard of the data, the shards together are exactly what the single process read, and only
process 0 is the main process.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import tolerances

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
TIMEOUT_S = 240  # generous for a loaded 2-core machine; a hang fails instead of blocking CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS", "OYSTER_TPU_POD"):
        env.pop(k, None)
    env.update(
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(REPO),
    )
    return env


def _spawn(out: pathlib.Path, devices: int, *extra: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--out", str(out), *extra],
        env=_env(devices),
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


def run_workers(tmp_path: pathlib.Path) -> tuple[list[dict], dict]:
    port = free_port()
    outs = [tmp_path / "process0.json", tmp_path / "process1.json"]
    ref_out = tmp_path / "single.json"
    procs = [
        _spawn(out, 4, "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i))
        for i, out in enumerate(outs)
    ]
    procs.append(_spawn(ref_out, 8))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers did not finish within {TIMEOUT_S}s; logs in {tmp_path}")
    finally:
        for proc in procs:
            _kill(proc)
    for proc, out in zip(procs, [*outs, ref_out]):
        log = out.with_suffix(".log").read_text()
        assert proc.returncode == 0 and out.exists(), f"{out.name} failed (rc={proc.returncode}):\n{log[-3000:]}"
    return [json.loads(o.read_text()) for o in outs], json.loads(ref_out.read_text())


def test_two_processes_match_one_process(tmp_path):
    workers, single = run_workers(tmp_path)

    assert single["process_count"] == 1 and single["global_devices"] == 8
    for i, w in enumerate(workers):
        assert (w["kind"], w["process_index"], w["process_count"]) == ("explicit", i, 2)
        assert (w["local_devices"], w["global_devices"]) == (4, 8)
        assert w["is_main_process"] == (i == 0)

    # Data: disjoint shards whose union is exactly what the single process read.
    shards = [set(w["ids_read"]) for w in workers]
    assert len(workers[0]["ids_read"]) == len(shards[0]) > 0
    assert not shards[0] & shards[1], f"processes read the same examples: {sorted(shards[0] & shards[1])}"
    assert shards[0] | shards[1] == set(single["ids_read"])
    assert [w["shard"] for w in workers] == [[0, 2], [1, 2]]

    # Loss: the jitted step's loss is a global value, identical on both processes, and equal to the
    # single-process run at every step. The steps must also have moved the loss (training happened).
    assert workers[0]["losses"] == workers[1]["losses"]
    assert len(single["losses"]) == 3
    for step, (multi, ref) in enumerate(zip(workers[0]["losses"], single["losses"])):
        assert abs(multi - ref) <= tolerances.MULTIPROCESS_VS_SINGLE, (step, multi, ref)
    assert len(set(single["losses"])) > 1
