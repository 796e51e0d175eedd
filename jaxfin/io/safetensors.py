"""Streaming reader and writer for the safetensors format, one tensor at a time.

Format (huggingface/safetensors README): an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw little-endian data.
We read with plain `readinto` instead of the library's mmap: mapped pages that were touched count towards the
process's resident memory until the file is closed, so a mmap reader looks (and on tight hosts is) as large as
the checkpoint. Reading into a fresh buffer keeps host memory at one tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import ml_dtypes
import numpy as np

from jaxfin.errors import UserError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100_000_000  # the reference implementation's limit
_ALIGN = 64


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    path: Path
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parses and validates the header of `path`: every tensor's byte range must lie inside the file and match its
    shape and dtype, so a truncated or corrupt file fails here with one line, before anything is loaded."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise UserError(f"{path}: truncated or corrupt safetensors header (length {n}, file has {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt safetensors header (not a JSON object)")
    infos = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = DTYPES[meta["dtype"]], tuple(meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name}: bad header entry {meta!r}") from None
        start, stop = 8 + n + begin, 8 + n + end
        if stop - start != math.prod(shape) * dtype.itemsize:
            raise UserError(f"{path}: tensor {name}: byte range {begin}..{end} does not fit shape {list(shape)}")
        if stop > size:
            raise UserError(
                f"{path}: truncated file: tensor {name} needs bytes up to {stop} but the file has {size}"
            )
        infos[name] = TensorInfo(path, name, dtype, shape, start, stop)
    return infos


def read_tensor(info: TensorInfo) -> np.ndarray:
    """The tensor as a fresh, writable numpy array (bf16 through ml_dtypes). The buffer is 64-byte aligned, which
    lets jax's CPU backend adopt it without a copy (device_put aliases aligned host buffers)."""
    n = info.end - info.start
    raw = np.empty(n + _ALIGN, np.uint8)
    skip = -raw.ctypes.data % _ALIGN
    buf = raw[skip:skip + n]
    view = memoryview(buf)
    with open(info.path, "rb", buffering=0) as f:
        f.seek(info.start)
        got = 0
        while got < len(buf):  # readinto may return less than asked (e.g. > 2 GiB on Linux)
            k = f.readinto(view[got:])
            if not k:
                raise UserError(f"{info.path}: truncated file while reading tensor {info.name}")
            got += k
    return buf.view(info.dtype).reshape(info.shape)


def dtype_code(dtype: Any) -> str:
    return _CODES[np.dtype(dtype)]


class Writer:
    """Writes one safetensors file from a known list of (name, shape, dtype), streaming the data afterwards:
    `with Writer(path, specs) as w: w.write(name, array)` in the same order as `specs`."""

    def __init__(self, path: Path, specs: Iterable[tuple[str, tuple[int, ...], np.dtype]]):
        self.path, self.order, header, offset = path, [], {}, 0
        for name, shape, dtype in specs:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            header[name] = {"dtype": dtype_code(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.order.append((name, tuple(shape), np.dtype(dtype)))
            offset += nbytes
        # transformers refuses files whose metadata lacks a known "format"; pad to 8 bytes like the reference writer.
        blob = json.dumps({"__metadata__": {"format": "pt"}, **header}, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._f: BinaryIO = open(path, "wb")
        self._f.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        want, shape, dtype = self.order[self._next]
        if name != want or array.shape != shape or array.dtype != dtype:
            raise ValueError(f"expected {want} {shape} {dtype}, got {name} {array.shape} {array.dtype}")
        self._f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        self._next += 1

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._f.close()
        if exc_type is None and self._next != len(self.order):
            raise ValueError(f"{self.path}: wrote {self._next} of {len(self.order)} tensors")

