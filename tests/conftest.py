"""Shared test setup: point OYSTER_DATA_DIR at ../shared/data (TensorFlow hides accelerators itself: data.tf_setup)."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]

# One persistent XLA compilation cache for the run, shared by both xdist workers and every subprocess they
# start (the environment is inherited): many tests compile the same small programs again in a fresh process
# (CLI runs, restarts, notebooks), and a hit skips XLA. A size cap turns on JAX's file lock, so one process
# never reads an entry another is still writing. A cold cache (a fresh clone) changes only the speed.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))
_SHARED_DATA = REPO.parent / "shared" / "data"
if "OYSTER_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["OYSTER_DATA_DIR"] = str(_SHARED_DATA)


def pytest_collection_modifyitems(config, items):
    """Tests marked `multidevice` need 8 fake devices, which only a fresh process can have."""
    import jax  # noqa: PLC0415  (imported lazily so XLA_FLAGS from the environment applies)

    if jax.device_count() >= 8:
        return
    skip = pytest.mark.skip(reason="needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    for item in items:
        if "multidevice" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir():
    """The benchmark data directory, or a clear skip when it is absent."""
    d = os.environ.get("OYSTER_DATA_DIR")
    if not d or not pathlib.Path(d).is_dir():
        pytest.skip("OYSTER_DATA_DIR is not set and ../shared/data does not exist; benchmark-data tests skipped")
    return pathlib.Path(d)
