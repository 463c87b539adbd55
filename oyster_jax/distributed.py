"""Multi-host setup: one `initialize()` for TPU pods, GPU clusters and single hosts.

    from oyster_jax import distributed
    info = distributed.initialize()          # first thing in main, before any JAX computation
    distributed.setup_logging()              # INFO on process 0, only warnings/errors elsewhere
    for step in distributed.progress(range(n)):  # tqdm bar on process 0 only
        ...
    index, count = distributed.data_shard(mesh)  # which slice of the data this process reads

Where the cluster description comes from, first match wins:

1. arguments of `initialize(...)`;
2. the flags `--coordinator_address`, `--num_processes`, `--process_id` (defined here, so any absl
   program importing this module accepts them);
3. the environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`
   (`launch/gpu.sh` sets them for multi-node runs without SLURM);
4. SLURM (`srun` with more than one task): coordinator = first node of the step, port derived from the
   job id (or `JAX_COORDINATOR_PORT`); one task per node sees all its GPUs, several tasks per node get
   one GPU each (`SLURM_LOCALID`);
5. a Cloud TPU VM: `jax.distributed.initialize()` with no arguments reads the slice from the TPU
   metadata. `launch/tpu_pod.sh` exports `OYSTER_TPU_POD=1`, which makes a failure there an error;
   without it (Colab, a single-host TPU VM) a failed detection means a single host;
6. otherwise a single host: nothing to do.

`OYSTER_DISTRIBUTED=off` forces a single host whatever the environment says.

Multi-host rules the trainers follow (all enforced by tests/test_multiprocess.py):
- every process runs the same program on the same config; jitted steps and Orbax saves/restores are
  collective, so every process calls them (Orbax writes each array shard from the process owning it);
- each process reads only its own data shard (`data_shard`) and builds the global batch with
  `global_batch` (`jax.make_array_from_process_local_data`);
- only process 0 logs, draws progress bars and writes plain files (metrics.jsonl, plots, reports):
  guard them with `is_main_process()`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys

import jax
import numpy as np

__all__ = [
    "ClusterSpec",
    "DistributedError",
    "any_process",
    "barrier",
    "data_shard",
    "data_state_for_checkpoint",
    "data_state_from_checkpoint",
    "gather_json",
    "detect",
    "global_batch",
    "initialize",
    "is_main_process",
    "local_batch_size",
    "print0",
    "process_count",
    "process_index",
    "progress",
    "setup_logging",
]

log = logging.getLogger(__name__)

_FLAGS_DEFINED = False
try:  # absl is what the CLIs parse flags with; the flags are optional, so a clash is not fatal.
    from absl import flags as _absl_flags

    _absl_flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0's coordinator (multi-host GPU/CPU runs)."
    )
    _absl_flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
    _absl_flags.DEFINE_integer("process_id", None, "This process's id in 0..num_processes-1.")
    _FLAGS_DEFINED = True
except Exception:  # DuplicateFlagError (defined elsewhere) or absl missing: fall back to env/SLURM
    pass


class DistributedError(RuntimeError):
    """The cluster description is incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How `initialize` will bring this process up. `kind` is one of single, explicit, slurm, tpu."""

    kind: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    source: str = ""  # where the values came from, for the log line and error messages
    required: bool = False  # tpu only: a failed auto-detection is an error, not a single host


def _flag_values() -> dict:
    if not _FLAGS_DEFINED:
        return {}
    fv = _absl_flags.FLAGS
    if not fv.is_parsed():
        return {}
    return {k: fv[k].value for k in ("coordinator_address", "num_processes", "process_id")}


def _int_env(env, name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def first_slurm_host(node_list: str) -> str:
    """'gpu[003-007,010],cpu1' -> 'gpu003'; 'a1,b2' -> 'a1' (SLURM's compressed host list)."""
    m = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", node_list)
    if not m or not m.group(0):
        raise DistributedError(f"cannot read the first host from SLURM node list {node_list!r}")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges)[0]


def _running_on_tpu_vm() -> bool:
    """A Cloud TPU VM: libtpu is installed and TPU chips are attached (checked without starting JAX)."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        return False
    return any(os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0"))


def detect(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids=None,
    env=None,
) -> ClusterSpec:
    """Decide how to initialise without touching JAX's backends (pure function of arguments/flags/env)."""
    env = os.environ if env is None else env
    if env.get("OYSTER_DISTRIBUTED", "").lower() in ("off", "0", "false", "none"):
        return ClusterSpec("single", source="OYSTER_DISTRIBUTED=off")
    ids = tuple([local_device_ids] if isinstance(local_device_ids, int) else local_device_ids or ()) or None

    for source, values in (
        (
            "arguments",
            dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id),
        ),
        ("flags", _flag_values()),
        (
            "environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)",
            dict(
                coordinator_address=env.get("JAX_COORDINATOR_ADDRESS") or None,
                num_processes=_int_env(env, "JAX_NUM_PROCESSES"),
                process_id=_int_env(env, "JAX_PROCESS_ID"),
            ),
        ),
    ):
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            continue
        missing = sorted(set(values) - set(given))
        if missing:
            raise DistributedError(f"multi-host setup from {source}: {', '.join(missing)} missing (got {given})")
        n, pid, addr = int(given["num_processes"]), int(given["process_id"]), str(given["coordinator_address"])
        if n < 1 or not 0 <= pid < n:
            raise DistributedError(f"multi-host setup from {source}: process_id={pid} not in 0..{n - 1}")
        if ":" not in addr:
            raise DistributedError(f"multi-host setup from {source}: coordinator_address={addr!r} needs host:port")
        if n == 1:
            return ClusterSpec("single", source=source)
        return ClusterSpec("explicit", addr, n, pid, ids, source)

    ntasks = _int_env(env, "SLURM_NTASKS")
    if ntasks and ntasks > 1 and env.get("SLURM_STEP_NODELIST"):
        job = _int_env(env, "SLURM_JOB_ID") or 0
        # Same port rule as JAX's own SLURM detection, so mixed launchers agree.
        port = env.get("JAX_COORDINATOR_PORT") or str(job % 2**12 + (65535 - 2**12 + 1))
        addr = f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{port}"
        pid = _int_env(env, "SLURM_PROCID")
        if pid is None:
            raise DistributedError("SLURM_NTASKS > 1 but SLURM_PROCID is not set: launch the job steps with srun")
        if ids is None:
            per_node = _slurm_tasks_on_this_node(env)
            if per_node and per_node > 1:
                ids = (_int_env(env, "SLURM_LOCALID") or 0,)  # several tasks per node: one device each
        return ClusterSpec("slurm", addr, ntasks, pid, ids, "SLURM")

    if _running_on_tpu_vm() or env.get("OYSTER_TPU_POD") == "1":
        return ClusterSpec("tpu", source="Cloud TPU metadata", required=env.get("OYSTER_TPU_POD") == "1")
    return ClusterSpec("single", source="no cluster found")


def _slurm_tasks_on_this_node(env) -> int | None:
    """SLURM_TASKS_PER_NODE is e.g. '8(x2),4': the count for this node (SLURM_NODEID) or None."""
    spec, node = env.get("SLURM_TASKS_PER_NODE"), _int_env(env, "SLURM_NODEID") or 0
    if not spec:
        return None
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node] if node < len(counts) else None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids=None,
    *,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
) -> ClusterSpec:
    """Bring up JAX's distributed runtime when this process is one of several; a no-op on one host.

    Call it once, before any JAX computation (it is safe to call again). Returns the `ClusterSpec` used.
    """
    spec = detect(coordinator_address, num_processes, process_id, local_device_ids)
    if jax.distributed.is_initialized():
        return spec
    if spec.kind == "single":
        return spec
    if spec.kind == "tpu":
        try:
            jax.distributed.initialize(initialization_timeout=initialization_timeout)
        except (ValueError, RuntimeError) as err:
            if spec.required:
                raise DistributedError(
                    f"OYSTER_TPU_POD=1 but the TPU slice could not be detected from the TPU metadata: {err}"
                ) from err
            log.info("TPU VM without pod metadata (%s): running as a single host", err)
            return ClusterSpec("single", source=f"TPU detection failed: {err}")
    else:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator_address,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
            local_device_ids=list(spec.local_device_ids) if spec.local_device_ids else None,
            # All four values are known: JAX's own SLURM detection would otherwise pin one GPU per process.
            cluster_detection_method="deactivate",
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
    log.info(
        "JAX distributed (%s from %s): process %d of %d, %d local / %d global devices",
        spec.kind,
        spec.source,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return spec


# ------------------------------------------------------------------------------------------------
# Who am I, and who talks.
# ------------------------------------------------------------------------------------------------


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0 (the one that logs, draws progress bars and writes plain files)."""
    return jax.process_index() == 0


class MainProcessFilter(logging.Filter):
    """Passes every record on process 0; elsewhere only records at `other_level` or above, tagged."""

    def __init__(self, other_level: int = logging.WARNING):
        super().__init__()
        self.other_level = other_level

    def filter(self, record: logging.LogRecord) -> bool:
        # Before initialize() there is one process; asking JAX would start its backends too early.
        index = jax.process_index() if jax.distributed.is_initialized() else 0
        if index == 0:
            return True
        if record.levelno < self.other_level:
            return False
        if not getattr(record, "_oyster_tagged", False):
            record.msg = f"[process {index}] {record.msg}"
            record._oyster_tagged = True
        return True


def setup_logging(level: int = logging.INFO, other_level: int = logging.WARNING) -> None:
    """Log at `level` on process 0 and only at `other_level`+ on the other processes (root and absl)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    handlers = list(root.handlers)
    try:
        from absl import logging as absl_logging

        handlers.append(absl_logging.get_absl_handler())
        absl_logging.set_verbosity(absl_logging.INFO if level <= logging.INFO else absl_logging.WARNING)
    except ImportError:
        pass
    for handler in handlers:
        if not any(isinstance(f, MainProcessFilter) for f in handler.filters):
            handler.addFilter(MainProcessFilter(other_level))


def progress(iterable=None, **tqdm_kwargs):
    """`tqdm(...)` that draws only on process 0 (the others iterate silently)."""
    from tqdm.auto import tqdm

    tqdm_kwargs["disable"] = tqdm_kwargs.get("disable", False) or not is_main_process()
    return tqdm(iterable, **tqdm_kwargs)


def print0(*args, **kwargs) -> None:
    """`print` on process 0 only."""
    if is_main_process():
        print(*args, **kwargs)


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (collective: all processes must call it).

    For decisions that must be unanimous, e.g. stopping after a SIGTERM that reached the hosts at different
    steps: a save that only some processes enter would hang the others.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def max_over_processes(value: int) -> int:
    """The largest `value` of all processes, on every process (collective: all processes must call it).

    For sizes that fix global array shapes but are measured on each process's own data shard."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(int(value), np.int64))))


# ------------------------------------------------------------------------------------------------
# Data: which rows of the global batch this process feeds.
# ------------------------------------------------------------------------------------------------


def _batch_sharding(mesh, batch_axes):
    from jax.sharding import NamedSharding, PartitionSpec

    axes = tuple(a for a in batch_axes if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None)), axes


def _process_row_blocks(mesh, batch_axes) -> dict[int, tuple[int, ...]]:
    """{process: sorted block indices of a [num_blocks] batch it owns}; num_blocks = product of batch axes."""
    sharding, axes = _batch_sharding(mesh, batch_axes)
    num_blocks = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    owned: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((num_blocks,)).items():
        start = index[0].start or 0
        owned.setdefault(device.process_index, set()).add(start)
    return {p: tuple(sorted(s)) for p, s in owned.items()}


def data_shard(mesh=None, batch_axes=("data", "fsdp")) -> tuple[int, int]:
    """(shard_index, shard_count) of the data this process must read.

    With a mesh, processes whose devices hold the same rows of the batch (e.g. when a tensor-parallel
    group spans hosts) read the same shard; without one, every process is its own shard.
    """
    if mesh is None:
        return jax.process_index(), jax.process_count()
    blocks = _process_row_blocks(mesh, batch_axes)
    distinct = sorted(set(blocks.values()))
    for i, a in enumerate(distinct):
        for b in distinct[i + 1 :]:
            if set(a) & set(b):
                raise DistributedError(
                    f"mesh {dict(mesh.shape)}: processes own overlapping but different batch rows ({a} vs {b}); "
                    "choose a mesh whose batch axes split evenly across hosts"
                )
    return distinct.index(blocks[jax.process_index()]), len(distinct)


def local_batch_size(global_batch_size: int, mesh=None, batch_axes=("data", "fsdp")) -> int:
    """Rows of the global batch this process feeds; errors unless they divide evenly."""
    _, count = data_shard(mesh, batch_axes)
    if global_batch_size % count:
        raise DistributedError(f"batch_size={global_batch_size} is not divisible by {count} data shards (hosts)")
    return global_batch_size // count


def global_batch(local_batch, mesh, batch_axes=("data", "fsdp")):
    """Host-local numpy batch (leading axis = this process's rows) -> global jax.Arrays sharded over batch_axes."""
    from jax.sharding import NamedSharding, PartitionSpec

    _, axes = _batch_sharding(mesh, batch_axes)
    _, shard_count = data_shard(mesh, batch_axes)

    def one(x):
        x = np.asarray(x)
        sharding = NamedSharding(mesh, PartitionSpec(axes if axes else None, *([None] * (x.ndim - 1))))
        global_shape = (x.shape[0] * shard_count, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(one, local_batch)


# ------------------------------------------------------------------------------------------------
# Per-process state in a shared checkpoint.
# ------------------------------------------------------------------------------------------------


def gather_json(obj) -> list:
    """Every process's JSON-able `obj`, in process order (collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(obj))]
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray(len(blob), np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(blob)] = blob
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]


def data_state_for_checkpoint(local_state) -> dict:
    """What to save as a checkpoint's data-iterator state: every process's state (collective).

    Orbax writes JSON items from process 0 only, so saving `iterator.get_state()` directly would keep
    process 0's position and lose the others'. Restore with `data_state_from_checkpoint`.
    """
    states = gather_json(local_state)
    return {"process_count": len(states), "processes": states}


def data_state_from_checkpoint(saved):
    """This process's data-iterator state out of `data_state_for_checkpoint`'s result.

    A plain state (a checkpoint written before per-process states, or by hand) is accepted on one process.
    """
    count = jax.process_count()
    if not (isinstance(saved, dict) and "processes" in saved):
        if count == 1:
            return saved
        raise DistributedError(
            f"the checkpoint's data state holds one process's position, but this run has {count} processes; "
            "the data position of the others is unknown (restart the stage, or resume with one process)"
        )
    states = saved["processes"]
    if len(states) != count:
        raise DistributedError(
            f"the checkpoint's data state was written by {len(states)} processes and this run has {count}; "
            "each process resumes its own data shard, so resume with the same number of hosts"
        )
    return states[jax.process_index()]
