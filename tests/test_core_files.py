"""Atomic writes: the old file survives a failed write, the new one appears whole, no temp files are left."""

from __future__ import annotations

import json
import math
import os

import pytest

from oyster_jax.core.files import (
    atomic_directory,
    atomic_output,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def test_write_replaces_whole_and_keeps_the_umask(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"a": 1, "text": "ü"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "text": "ü"}
    old = os.umask(0o022)
    try:
        atomic_write_text(path, "second\n")
    finally:
        os.umask(old)
    assert path.read_text() == "second\n"
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, as open() would make it
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["run.json"]


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "DONE.json"
    atomic_write_json(path, {"step": 3})
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_output(path) as f:
            f.write('{"step": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"step": 3}
    assert os.listdir(tmp_path) == ["DONE.json"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_json_is_refused_before_writing(tmp_path, bad):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"asr": 0.5})
    with pytest.raises(ValueError, match="not JSON compliant"):
        atomic_write_json(path, {"asr": bad})
    assert json.loads(path.read_text()) == {"asr": 0.5}


def test_atomic_directory_replaces_only_on_success(tmp_path):
    out = tmp_path / "export"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError, match="conversion failed"):
        with atomic_directory(out) as tmp:
            (tmp / "a.txt").write_text("second, half written")
            raise RuntimeError("conversion failed")
    assert (out / "a.txt").read_text() == "first"  # the previous directory is untouched
    old = os.umask(0o022)
    try:
        with atomic_directory(out) as tmp:
            (tmp / "b.txt").write_text("second")
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced whole
    assert out.stat().st_mode & 0o777 == 0o755  # as mkdir would make it, not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary or old directory left
