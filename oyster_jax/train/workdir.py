"""Workdir paths that may be local or an object store (`gs://bucket/run`, as `launch/tpu_pod.sh` passes).

`pathlib` would turn `gs://b/run` into the local directory `./gs:/b/run` on every host, so the trainer,
checkpointer and metrics writer go through `etils.epath`: local paths behave as before, and `gs://` paths
use TensorFlow's GCS filesystem for small files while Orbax writes array shards through TensorStore.
"""

from __future__ import annotations

import os
import time

from etils import epath

URL_SCHEMES = ("gs://", "s3://", "az://")


def is_remote(path) -> bool:
    return str(path).startswith(URL_SCHEMES)


def resolve(path) -> epath.Path:
    """`path` as an epath.Path: URLs unchanged, local paths made absolute (the cwd may change later)."""
    if is_remote(path):
        return epath.Path(str(path))
    return epath.Path(os.path.abspath(os.fspath(path)))


def move_aside(path: epath.Path, suffix: str) -> epath.Path:
    """Rename `path` to `<name>.<suffix>-<timestamp>` beside it (never delete what a person may want)."""
    dst = path.parent / f"{path.name}.{suffix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.rename(dst)
    return dst
