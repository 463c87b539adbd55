"""Streaming safetensors reader and writer over numpy + ml_dtypes (bfloat16 included).

Why our own: the `safetensors` numpy backend has no bfloat16, and the flax backend puts every tensor on
the default device. Reading here is an mmap per file and a zero-copy view per tensor, so converting a
14B checkpoint touches one tensor at a time. Pickle formats are never opened.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pathlib
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

from oyster_jax.core.files import atomic_output

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
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointFormatError(f"{self.path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:  # checked before reading: a corrupt length must not allocate 2**62 bytes
                raise CheckpointFormatError(
                    f"{self.path}: header length {n} runs past the end of the file ({size} bytes); truncated or not "
                    "a safetensors file"
                )
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointFormatError(f"{self.path}: unreadable safetensors header ({e})") from e
            if not isinstance(header, dict):
                raise CheckpointFormatError(f"{self.path}: safetensors header is not a JSON object")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # size >= 8 here
        self.metadata = header.pop("__metadata__", {}) or {}
        self._header = header
        self._data_start = 8 + n
        self._check_layout(size - self._data_start)

    def _check_layout(self, data_bytes: int) -> None:
        """Every tensor's byte range lies inside the data section, matches its shape and overlaps no other."""
        spans = []
        for name, info in self._header.items():
            where = f"{self.path}: tensor {name!r}"
            try:
                dtype_code, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointFormatError(f"{where}: malformed header entry {info!r}") from e
            if dtype_code not in DTYPES:
                raise CheckpointFormatError(f"{where} has unsupported dtype {dtype_code}")
            if not all(isinstance(d, int) and d >= 0 for d in shape) or not all(
                isinstance(o, int) for o in (start, end)
            ):
                raise CheckpointFormatError(f"{where}: shape {shape} / offsets {[start, end]} are not whole numbers")
            if not 0 <= start <= end <= data_bytes:
                raise CheckpointFormatError(
                    f"{where}: bytes [{start}, {end}) lie outside the data section ({data_bytes} bytes); "
                    "the file is truncated or corrupt"
                )
            if end - start != math.prod(shape) * DTYPES[dtype_code].itemsize:
                raise CheckpointFormatError(f"{where}: byte range does not match shape {shape} ({dtype_code})")
            spans.append((start, end, name))
        spans.sort()
        for (_, end_a, a), (start_b, end_b, b) in zip(spans, spans[1:]):
            if start_b < end_a and start_b != end_b:  # empty tensors may share an offset
                raise CheckpointFormatError(f"{self.path}: tensors {a!r} and {b!r} overlap in the file")

    def keys(self) -> list[str]:
        return list(self._header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self._header[name]  # checked by _check_layout when the file was opened
        start, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        arr = np.frombuffer(
            self._mm, dtype=dtype, count=(end - start) // dtype.itemsize, offset=self._data_start + start
        )
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
    with atomic_output(path, "wb") as f:  # a crash mid-write never leaves a torn file under the final name
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, arr in tensors:
            f.write(np.ascontiguousarray(arr).tobytes())
