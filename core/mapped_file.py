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

Letting a page go from the process leaves it in the system's page cache, and there the
size of its folio decides what the next touch maps: a file just written (an export)
sits in large folios, so one small read maps megabytes around it. `forget` also drops
a range from the page cache and reads it back without read-ahead from then on: for a
model whose weights now live elsewhere (XNNPACK's packed cache) and of which only small
constants are still read (bench/README.md, "A native runner's floor": a just-written
SmolLM2 int8 program mapped 121 MiB of such folios).

The map stays valid while any view of it lives; ``Program.save`` replaces a file
atomically (a new inode), so saving over a loaded program is safe. Truncating a mapped
file in place from outside is not: reading a page past the new end raises SIGBUS, as
for every memory-mapped reader.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from stat import S_ISREG
from typing import Union

import numpy as np

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]

CHUNK = 8 << 20  # hashed, then let go, 8 MiB at a time: a program's peak never holds a whole entry for its checksum


class FileMap(mmap.mmap):
    """A read-only map of a whole file that knows which file (path and inode), so its
    ranges can also be dropped from the page cache (`forget`)."""

    path: str
    inode: int


def map_file(path: str) -> Buffer:
    """The file at ``path`` as a read-only buffer: a memory map, or ``b""`` for an
    empty file (which cannot be mapped). Raises OSError as ``open`` does, ValueError for
    what is not a regular file (opened without blocking: a named pipe's open waits for a
    writer, which hung `edgeport run FIFO`)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        stat = os.fstat(fd)
        if not S_ISREG(stat.st_mode):
            raise ValueError("not a regular file")
        if stat.st_size == 0:
            return b""
        mapped = FileMap(fd, 0, access=mmap.ACCESS_READ)  # the map outlives the descriptor
    finally:
        os.close(fd)
    mapped.path, mapped.inode = os.path.abspath(path), stat.st_ino
    return mapped


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
    found = _map_range(view)
    if found is not None:
        mapped, start, length = found
        mapped.madvise(mmap.MADV_DONTNEED, start, length)


def forget(view: Buffer) -> None:
    """`release` ``view``, drop its range of the file from the page cache, and read that
    range back page by page from now on (no read-ahead), so that a later small read maps
    a page, not the large folio a fresh file's write left around it. For a mapped model
    whose weights are no longer read from the file; anything but a `map_file` view is
    only released. Other readers of the file re-read what they touch from disk; a file
    still being written back (just exported) is waited for first."""
    found = _map_range(view)
    if found is None:
        return
    mapped, start, length = found
    mapped.madvise(mmap.MADV_DONTNEED, start, length)
    if not isinstance(mapped, FileMap) or not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(mapped.path, os.O_RDONLY)
    except OSError:  # moved or gone: the cache of the old inode is the system's to drop
        return
    try:
        if os.fstat(fd).st_ino == mapped.inode:  # a program saved over it since is another file
            os.fdatasync(fd)  # only clean pages can be dropped: a file just exported may not be on disk yet
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    mapped.madvise(mmap.MADV_RANDOM, start, length)


def _map_range(view: Buffer) -> tuple[mmap.mmap, int, int] | None:
    """The open memory map under ``view`` with the page-aligned (start, length) of its
    range in it, or None when ``view`` is not a slice of one (or pages cannot be let go:
    Windows, where they stay until the system wants them)."""
    if not isinstance(view, memoryview) or not isinstance(view.obj, mmap.mmap) or not len(view):
        return None
    if not hasattr(mmap, "MADV_DONTNEED"):
        return None
    mapped = view.obj
    if mapped.closed:
        return None
    base = np.frombuffer(mapped, dtype=np.uint8).ctypes.data
    offset = np.frombuffer(view, dtype=np.uint8).ctypes.data - base
    start = offset - offset % mmap.PAGESIZE  # pages are clean file pages: rounding out only re-reads a neighbour
    return mapped, start, offset + len(view) - start
