"""Where edgeport keeps files it can rebuild, and the bound on how much of the disk they take.

The cpu backend packs a model's weights for XNNPACK once into a cache file about the
weights' size (backends/tflite/compiled.py), keyed by the artifact's checksum: every
re-export of a model is a new artifact and a new file. fp32 SmolLM2 packs to 540 MB, so a
day of re-exporting it left 3.2 GB behind. Nothing needed those files again, and nothing
removed them: a cache with no bound fills the disk.

So a cache kind (a subdirectory: ``xnnpack``, ``native``) is kept within a size
(`size_limit`, ``EDGEPORT_CACHE_MAX``, default 8 GiB) by deleting its least recently used
files whenever a new one is added (`make_room`). A file is used when a load maps it
(`mark_used` sets its modification time: access times are not kept on most mounts). A file
another process still maps stays readable by it after the delete (an unlinked file lives
until its last map goes); that process's next load builds it again.

A process that dies while building a file may leave its temporary ``*.building`` file
behind; no load reads one, and `make_room` deletes those older than a day.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

LIMIT_ENV = "EDGEPORT_CACHE_MAX"
DEFAULT_LIMIT = 8 << 30
BUILDING_SUFFIX = ".building"
_STALE_BUILD_SECONDS = 24 * 3600
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def cache_dir() -> Path:
    """``$EDGEPORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeport``, else ``~/.cache/edgeport``."""
    explicit = os.environ.get("EDGEPORT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeport"


def size_limit() -> int:
    """The bytes each cache kind may hold: ``$EDGEPORT_CACHE_MAX`` (a number of bytes, or
    with a K, M, G or T suffix: ``500M``, ``20G``), else 8 GiB."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text, re.IGNORECASE)
    if found is None:
        raise InputError(f"{LIMIT_ENV}={text!r} is not a size",
                         hint=f"give bytes or a size with a unit, e.g. {LIMIT_ENV}=20G or {LIMIT_ENV}=500M")
    return int(float(found[1]) * _UNITS[found[2].upper()])


@dataclass(frozen=True)
class Entry:
    """One cached file: its path, size in bytes and when it was last used (epoch seconds)."""

    path: Path
    size: int
    used: float


def kinds() -> list[str]:
    """The cache kinds (subdirectories) present."""
    try:
        return sorted(p.name for p in cache_dir().iterdir() if p.is_dir())
    except OSError:
        return []


def entries(kind: str) -> list[Entry]:
    """The finished files of cache ``kind``, least recently used first."""
    found = []
    for path in _files(cache_dir() / kind):
        if not path.name.endswith(BUILDING_SUFFIX):
            stat = _stat(path)
            if stat is not None:
                found.append(Entry(path, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda e: e.used)


def mark_used(path: Path) -> None:
    """Record that a load used ``path`` (`make_room` deletes the least recently used first)."""
    try:
        os.utime(path)
    except OSError:
        pass  # read-only cache or gone: the order is a preference, not a promise


def make_room(kind: str, keep: Path) -> list[Path]:
    """Delete cache ``kind``'s least recently used files until it holds at most
    `size_limit` bytes, never ``keep`` (the file just added or about to be), and its
    ``*.building`` files older than a day; returns the paths deleted."""
    limit = size_limit()
    deleted = [path for path in _files(cache_dir() / kind) if _stale_build(path) and _delete(path)]
    held = sum(e.size for e in entries(kind))
    for entry in entries(kind):
        if held <= limit:
            break
        if entry.path != keep and _delete(entry.path):
            held -= entry.size
            deleted.append(entry.path)
    return deleted


def clear() -> int:
    """Delete every cached file, all kinds; returns the bytes freed."""
    root = cache_dir()
    freed = sum(stat.st_size for path in root.rglob("*") if path.is_file() and (stat := _stat(path)) is not None)
    shutil.rmtree(root, ignore_errors=True)
    return freed


def _files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.is_file()]
    except OSError:
        return []


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None  # deleted meanwhile by another process


def _stale_build(path: Path) -> bool:
    stat = _stat(path)
    return (path.name.endswith(BUILDING_SUFFIX) and stat is not None
            and time.time() - stat.st_mtime > _STALE_BUILD_SECONDS)


def _delete(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except OSError:
        return False
