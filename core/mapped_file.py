"""A program file read in place: one read-only memory map, entries as views of it.

A .edgeport zip stores every entry uncompressed, so each entry's bytes are one range
of the file. Loading maps the file once and hands out read-only ``memoryview`` slices
of the map instead of reading the file into memory and copying each entry out of it
(which held every weight three times before the first call: the file, the entry, and
the backend's own copy). What a loaded program keeps of its file is then page cache,
which the system can drop and re-read at will, not process memory.

Two things keep the mapped pages from piling up in the process's resident set:
`sha256_of` hashes an entry in chunks and lets each chunk's pages go once hashed, and
`as_bytes` does the same after copying a view a runtime needs as ``bytes``. Letting a
page go (``MADV_DONTNEED`` on a private read-only file mapping) loses nothing: the
next read of it faults it back in from the file.

The map stays valid while any view of it lives; ``Program.save`` replaces a file
atomically (a new inode), so saving over a loaded program is safe. Truncating a mapped
file in place from outside is not: reading a page past the new end raises SIGBUS, as
for every memory-mapped reader.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Union

import numpy as np

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]

CHUNK = 8 << 20  # hashed, then let go, 8 MiB at a time: a program's peak never holds a whole entry for its checksum


def map_file(path: str) -> Buffer:
    """The file at ``path`` as a read-only buffer: a memory map, or ``b""`` for an
    empty file (which cannot be mapped). Raises OSError as ``open`` does."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # the map outlives the descriptor


def sha256_of(view: memoryview) -> str:
    """The sha256 of ``view``, streamed: each chunk's mapped pages are let go once hashed."""
    digest = hashlib.sha256()
    for start in range(0, len(view), CHUNK):
        chunk = view[start:start + CHUNK]
        digest.update(chunk)
        release(chunk)
    return digest.hexdigest()


def as_bytes(data: Buffer) -> bytes:
    """``data`` as ``bytes``, for a backend whose runtime takes nothing else (LiteRT's
    ``Interpreter(model_content=...)``, ONNX Runtime's ``InferenceSession``): a loaded
    artifact's data is a read-only view of the mapped program file, so this is one
    copy, after which the view's mapped pages are let go; ``bytes`` come back as is."""
    if isinstance(data, bytes):
        return data
    out = bytes(data)
    release(data)
    return out


def release(view: Buffer) -> None:
    """Let the pages under ``view`` go from this process's memory, when ``view`` is a
    slice of a memory map; anything else (bytes, a writable buffer) is left alone, as
    dropping anonymous pages would lose their contents."""
    if not isinstance(view, memoryview) or not isinstance(view.obj, mmap.mmap) or not len(view):
        return
    if not hasattr(mmap, "MADV_DONTNEED"):  # not on Windows: the pages stay until the system wants them
        return
    mapped = view.obj
    if mapped.closed:
        return
    base = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
    offset = np.frombuffer(view, dtype=np.uint8).ctypes.data - base
    start = offset - offset % mmap.PAGESIZE  # pages are clean file pages: rounding out only re-reads a neighbour
    mapped.madvise(mmap.MADV_DONTNEED, start, offset + len(view) - start)
