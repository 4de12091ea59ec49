"""Reading a GGUF file's metadata and tensor table, fast.

The ``gguf`` package's reader builds a numpy view for every part of every metadata
value; for a vocabulary of 49k tokens and 49k merges that takes seconds. This reader
keeps scalars and strings, skips the large arrays it is not asked for (the tokenizer
is converted elsewhere), and leaves tensor data in a memory map until dequantized.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]  # torch order (GGUF lists the innermost dim first)
    ggml_type: int
    data: np.ndarray  # the raw (possibly quantized) bytes up to the next tensor's (padding too), memory-mapped


@dataclass(frozen=True)
class GgufFile:
    metadata: dict[str, Any]  # large arrays appear as their length only
    tensors: dict[str, GgufTensor]


class GgufFormatError(ValueError):
    pass


def read_gguf(path: Path, keep_arrays: int = 1024) -> GgufFile:
    """Parse ``path``; arrays longer than ``keep_arrays`` are left out (their length kept)."""
    blob = np.memmap(path, dtype=np.uint8, mode="r")
    reader = _Reader(blob)
    if bytes(reader.take(4)) != _MAGIC:
        raise GgufFormatError("not a GGUF file (bad magic)")
    version = reader.scalar("<I")
    if version not in (2, 3):
        raise GgufFormatError(f"GGUF version {version} is not supported (2 and 3 are)")
    tensor_count, kv_count = reader.scalar("<Q"), reader.scalar("<Q")
    metadata = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"), keep_arrays)
    infos = []
    for _ in range(tensor_count):
        name = reader.string()
        dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
        ggml_type, offset = reader.scalar("<I"), reader.scalar("<Q")
        infos.append((name, tuple(reversed(dims)), ggml_type, offset))
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    start = -(-reader.pos // alignment) * alignment
    ends = sorted(offset for *_, offset in infos)[1:] + [len(blob) - start]
    end_of = dict(zip(sorted(offset for *_, offset in infos), ends))
    tensors = {
        name: GgufTensor(name, shape, ggml_type, blob[start + offset : start + end_of[offset]])
        for name, shape, ggml_type, offset in infos
    }
    return GgufFile(metadata, tensors)


class _Reader:
    def __init__(self, blob: np.ndarray) -> None:
        self.blob = blob
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > len(self.blob):
            raise GgufFormatError("the file ends inside its metadata")
        out = self.blob[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def skip(self, kind: int) -> None:
        if kind == _STRING:
            length = self.scalar("<Q")  # read before moving: `pos += scalar()` would lose the 8 bytes
            self.pos += length
        elif kind in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[kind])
        else:
            self.value(kind, 0)

    def value(self, kind: int, keep_arrays: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise GgufFormatError(f"unknown metadata value type {kind}")
        item, count = self.scalar("<I"), self.scalar("<Q")
        if item in _SCALARS:
            width = struct.calcsize(_SCALARS[item])
            values = np.frombuffer(self.take(width * count), dtype=np.dtype(_SCALARS[item]))
            return values.tolist() if count <= keep_arrays else count
        if count > keep_arrays:
            for _ in range(count):
                self.skip(item)
            return count
        return [self.value(item, keep_arrays) for _ in range(count)]
