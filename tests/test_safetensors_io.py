"""The safetensors reader checks a file's layout against its size before it allocates or maps anything."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from oyster_jax.convert.safetensors_io import CheckpointFormatError, SafetensorsFile, write_file


def _good(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.ones((4,), ml_dtypes.bfloat16),
        "empty": np.zeros((0, 3), np.float32),
    }
    write_file(path, tensors.items())
    return path, tensors


def _raw(path, header: dict, data: bytes):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_round_trip(tmp_path):
    path, tensors = _good(tmp_path)
    f = SafetensorsFile(path)
    assert sorted(f.keys()) == sorted(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(f.get(name), arr)
        assert f.get(name).dtype == arr.dtype


def test_truncated_file_names_the_file_and_tensor(tmp_path):
    path, _ = _good(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # the last tensor loses its tail
    with pytest.raises(CheckpointFormatError, match=r"model\.safetensors: tensor 'b'.*outside the data section"):
        SafetensorsFile(path)


def test_absurd_header_length_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(CheckpointFormatError, match=r"huge\.safetensors: header length 4611686018427387904 runs past"):
        SafetensorsFile(path)


def test_overlapping_tensors_are_refused(tmp_path):
    path = tmp_path / "overlap.safetensors"
    header = {
        "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    _raw(path, header, bytes(12))
    with pytest.raises(CheckpointFormatError, match=r"tensors 'x' and 'y' overlap"):
        SafetensorsFile(path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, r"tensor 'x': byte range does not match shape"),
        ({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}, r"tensor 'x' has unsupported dtype Q4"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, r"tensor 'x': bytes \[8, 0\) lie outside"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, r"tensor 'x': shape \[-2\]"),
        ({"dtype": "F32", "shape": [2]}, r"tensor 'x': malformed header entry"),
    ],
)
def test_bad_header_entries_name_the_tensor(tmp_path, entry, message):
    path = tmp_path / "bad.safetensors"
    _raw(path, {"x": entry}, bytes(8))
    with pytest.raises(CheckpointFormatError, match=message):
        SafetensorsFile(path)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path, tensors = _good(tmp_path)
    before = path.read_bytes()

    class Unreadable:  # looks like an array to the header pass, fails when its bytes are taken
        shape, size, dtype = (2,), 2, np.dtype(np.float32)

        def __array__(self, *args, **kwargs):
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        write_file(path, [("a", tensors["a"]), ("bad", Unreadable())])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind
