"""oyster_jax.distributed without a cluster: how `detect` reads arguments / env / SLURM, the process-0
logging filter and progress bar, and the single-host data shard."""

from __future__ import annotations

import json
import logging

import jax
import pytest

from oyster_jax import distributed


def test_single_host_is_a_noop():
    spec = distributed.initialize()  # the test environment has no cluster
    assert spec.kind in ("single",)
    assert not jax.distributed.is_initialized()
    assert distributed.is_main_process()
    assert distributed.data_shard() == (0, 1)
    assert distributed.local_batch_size(8) == 8


def test_explicit_arguments_win_over_env():
    env = {"JAX_COORDINATOR_ADDRESS": "other:1", "JAX_NUM_PROCESSES": "9", "JAX_PROCESS_ID": "8"}
    spec = distributed.detect("10.0.0.1:1234", 4, 3, env=env)
    assert (spec.kind, spec.coordinator_address, spec.num_processes, spec.process_id) == (
        "explicit",
        "10.0.0.1:1234",
        4,
        3,
    )
    assert spec.source == "arguments"


def test_env_variables():
    env = {"JAX_COORDINATOR_ADDRESS": "node0:5000", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    spec = distributed.detect(env=env)
    assert (spec.kind, spec.coordinator_address, spec.num_processes, spec.process_id) == (
        "explicit",
        "node0:5000",
        2,
        1,
    )
    assert spec.local_device_ids is None  # all local devices


def test_one_process_is_single_host():
    env = {"JAX_COORDINATOR_ADDRESS": "node0:5000", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    assert distributed.detect(env=env).kind == "single"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "node0:5000", "JAX_NUM_PROCESSES": "2"}, "process_id missing"),
        ({"JAX_COORDINATOR_ADDRESS": "node0", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "host:port"),
        (
            {"JAX_COORDINATOR_ADDRESS": "n:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            "process_id=2 not in 0..1",
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "n:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
            "JAX_NUM_PROCESSES='two'",
        ),
        ({"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]", "SLURM_JOB_ID": "7"}, "SLURM_PROCID"),
    ],
)
def test_incomplete_descriptions_name_the_missing_field(env, message):
    with pytest.raises(distributed.DistributedError, match=message.replace("(", r"\(").replace(".", r"\.")):
        distributed.detect(env=env)


def test_slurm_one_task_per_node_sees_all_gpus():
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "2",
        "SLURM_STEP_NODELIST": "gpu[007-010]",
        "SLURM_TASKS_PER_NODE": "1(x4)",
    }
    spec = distributed.detect(env=env)
    # Port: job id mod 4096 into the top 4096 ports, as JAX's own SLURM detection computes it.
    assert (spec.kind, spec.coordinator_address) == ("slurm", f"gpu007:{123456 % 4096 + 61440}")
    assert (spec.num_processes, spec.process_id, spec.local_device_ids) == (4, 2, None)


def test_slurm_one_task_per_gpu_pins_its_device_and_port_override():
    env = {
        "SLURM_JOB_ID": "5",
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "11",
        "SLURM_LOCALID": "3",
        "SLURM_NODEID": "1",
        "SLURM_STEP_NODELIST": "a17,b2",
        "SLURM_TASKS_PER_NODE": "8(x2)",
        "JAX_COORDINATOR_PORT": "4242",
    }
    spec = distributed.detect(env=env)
    assert (spec.coordinator_address, spec.process_id, spec.local_device_ids) == ("a17:4242", 11, (3,))


def test_slurm_single_task_and_off_switch():
    assert distributed.detect(env={"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}).kind == "single"
    env = {"OYSTER_DISTRIBUTED": "off", "JAX_COORDINATOR_ADDRESS": "n:1", "JAX_NUM_PROCESSES": "2"}
    assert distributed.detect(env=env).kind == "single"


def test_tpu_pod_flag_makes_detection_required():
    spec = distributed.detect(env={"OYSTER_TPU_POD": "1"})
    assert (spec.kind, spec.required) == ("tpu", True)


@pytest.mark.parametrize(
    "node_list, first",
    [("node001", "node001"), ("node001,host2", "node001"), ("gpu[003-007,010],cpu1", "gpu003"), ("x[12,15]", "x12")],
)
def test_first_slurm_host(node_list, first):
    assert distributed.first_slurm_host(node_list) == first


def _record(level, msg):
    return logging.LogRecord("t", level, __file__, 1, msg, None, None)


def test_log_filter_keeps_process_zero_and_only_warnings_elsewhere(monkeypatch):
    f = distributed.MainProcessFilter()
    assert f.filter(_record(logging.INFO, "step 1"))
    monkeypatch.setattr(jax, "process_index", lambda: 3)
    assert f.filter(_record(logging.INFO, "step 1"))  # before initialize() there is only one process
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert not f.filter(_record(logging.INFO, "step 1"))
    warn = _record(logging.WARNING, "slow input")
    assert f.filter(warn) and warn.getMessage() == "[process 3] slow input"
    assert f.filter(warn) and warn.getMessage() == "[process 3] slow input"  # tagged once


def test_progress_bar_only_on_process_zero(monkeypatch):
    assert not distributed.progress(range(3)).disable
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    bar = distributed.progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]


def test_print0(monkeypatch, capsys):
    distributed.print0("hello")
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    distributed.print0("not shown")
    assert capsys.readouterr().out == "hello\n"


def test_data_state_round_trip_on_one_process():
    state = {"draws": 7, "config": {"shard_index": 0}}
    saved = distributed.data_state_for_checkpoint(state)
    assert saved == {"process_count": 1, "processes": [state]}
    assert json.loads(json.dumps(saved)) == saved  # what Orbax's JsonSave writes
    assert distributed.data_state_from_checkpoint(saved) == state
    assert distributed.data_state_from_checkpoint(state) == state  # a plain (older) state on one process


def test_data_state_from_another_process_count_is_refused(monkeypatch):
    saved = {"process_count": 2, "processes": [{"draws": 1}, {"draws": 2}]}
    with pytest.raises(distributed.DistributedError, match="written by 2 processes and this run has 1"):
        distributed.data_state_from_checkpoint(saved)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert distributed.data_state_from_checkpoint(saved) == {"draws": 2}
    with pytest.raises(distributed.DistributedError, match="holds one process's position"):
        distributed.data_state_from_checkpoint({"draws": 1})


def test_any_process_on_one_process():
    assert distributed.any_process(True) is True
    assert distributed.any_process(False) is False
