"""Atomic file writes: what a rerun reads back is either the old file or the whole new one, never a torn one.

The bytes go to a temporary file in the same folder (same filesystem, so the rename is atomic), are
fsynced, and `os.replace` puts them under the final name. A crash at any point leaves the previous file
intact; a failed write leaves no temporary file behind. JSON is written strictly (`allow_nan=False`): a
non-finite number is a bug to surface, not a token (`NaN`, `Infinity`) that strict readers reject.

Object stores (`gs://...`) write whole objects atomically by themselves; `oyster_jax.train.workdir` routes
those through `etils.epath` and local paths here.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile

__all__ = [
    "cache_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_output",
    "atomic_directory",
]


def cache_dir() -> pathlib.Path:
    """The project's cache: ``$OYSTER_CACHE``, else ``~/.cache/oyster_jax`` (fetched models, rebuilt seed files)."""
    return pathlib.Path(os.environ.get("OYSTER_CACHE") or pathlib.Path.home() / ".cache" / "oyster_jax")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """`with atomic_output(path) as f: f.write(...)`: the file appears under `path` only if the block ends
    without an exception. The new file gets the permissions an ordinary `open` would (the umask applies)."""
    path = pathlib.Path(path)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _default_mode(tmp, 0o666)  # mkstemp creates 0600; match what open() would have made
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Strict JSON (non-finite floats raise ValueError before anything is written), UTF-8, trailing newline."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """`with atomic_directory(out) as tmp: ...write into tmp...`: on success `tmp` takes the place of `path`
    by renames (an existing `path` is replaced only then, so a failed export or conversion never leaves a
    half-written directory or destroys the previous one); on failure `tmp` is removed and `path` is as it
    was. The new directory gets the permissions `mkdir` would give it (the umask applies)."""
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _default_mode(tmp, 0o777)  # mkdtemp makes it private
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _default_mode(path: pathlib.Path, base: int) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, base & ~umask)
