"""Workdir paths that may be local or an object store (`gs://bucket/run`, as `launch/tpu_pod.sh` passes).

`pathlib` would turn `gs://b/run` into the local directory `./gs:/b/run` on every host, so the trainer,
checkpointer and metrics writer go through `etils.epath`: local paths behave as before, and `gs://` paths
use TensorFlow's GCS filesystem for small files while Orbax writes array shards through TensorStore.

Small files a rerun reads back (config.json, model_config.json, DONE.json, ...) go through `write_text`,
`write_json` and `write_bytes`: local paths through `oyster_jax.core.files` (temp file, fsync, rename),
object-store paths as one object write, which is already all-or-nothing.
"""

from __future__ import annotations

import json
import os
import time

from etils import epath

from oyster_jax.core import files

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


def write_bytes(path, data: bytes) -> None:
    """Replace `path` as a whole: readers see the old file or the new one, never a torn one."""
    if is_remote(path):
        epath.Path(str(path)).write_bytes(data)
    else:
        files.atomic_write_bytes(os.fspath(path), data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, indent: int | None = 2) -> None:
    """Strict JSON (a NaN/Inf raises before anything is written), atomically."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False) + "\n")
