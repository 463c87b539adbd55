"""Streaming safetensors reader and writer over numpy + ml_dtypes (bfloat16 included).

Why our own: the `safetensors` numpy backend has no bfloat16, and the flax backend puts every tensor on
the default device. Reading here is an mmap per file and a zero-copy view per tensor, so converting a
14B checkpoint touches one tensor at a time. Pickle formats are never opened.
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointFormatError(ValueError):
    """A checkpoint file we refuse or cannot parse; the message names the file and tensor."""


class SafetensorsFile:
    """One `.safetensors` file, memory-mapped; `get(name)` returns a read-only numpy view."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointFormatError(f"{self.path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointFormatError(f"{self.path}: unreadable safetensors header ({e})") from e
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.path.stat().st_size else None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._header = header
        self._data_start = 8 + n

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self._header[name]
        if info["dtype"] not in DTYPES:
            raise CheckpointFormatError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        count = (end - start) // dtype.itemsize
        if count != int(np.prod(info["shape"], dtype=np.int64)):
            raise CheckpointFormatError(f"{self.path}: tensor {name!r} byte range does not match shape {info['shape']}")
        arr = np.frombuffer(self._mm, dtype=dtype, count=count, offset=self._data_start + start)
        return arr.reshape(info["shape"])


def open_checkpoint_dir(hf_dir: str | os.PathLike) -> dict[str, SafetensorsFile]:
    """Every tensor name of a Hugging Face directory -> the file that holds it."""
    hf_dir = pathlib.Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"{hf_dir}: not a directory")
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointFormatError(
                f"{hf_dir}: only pickle checkpoints found ({', '.join(pickles)}). oyster_jax never unpickles; "
                "convert them to safetensors first (e.g. load once in transformers you trust and "
                "`save_pretrained(dir, safe_serialization=True)`)."
            )
        raise CheckpointFormatError(f"{hf_dir}: no *.safetensors files")
    index_path = hf_dir / "model.safetensors.index.json"
    opened = {p.name: SafetensorsFile(p) for p in files}
    where: dict[str, SafetensorsFile] = {}
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        for name, fname in weight_map.items():
            if fname not in opened:
                raise CheckpointFormatError(f"{index_path}: tensor {name!r} points to missing file {fname}")
            where[name] = opened[fname]
    else:
        for f in opened.values():
            for name in f.keys():
                where[name] = f
    return where


def write_file(path: str | os.PathLike, tensors: Iterator[tuple[str, np.ndarray]], metadata=None) -> None:
    """Write (name, array) pairs to one safetensors file. The header is computed first from shapes, so
    `tensors` may be a generator that materializes one tensor at a time."""
    tensors = list(tensors)  # (name, lazy) pairs are small; arrays are produced by the caller per file
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, arr in tensors:
        size = arr.size * arr.dtype.itemsize
        header[name] = {
            "dtype": _CODES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in tensors:
            f.write(np.ascontiguousarray(arr).tobytes())
