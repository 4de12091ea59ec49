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

A cached file is checked at each use, as a program file is (`usable`). XNNPACK runs packed
weights as they are: a cache file changed after it was packed gave other tokens with no
error. When a file is published its sha256 is kept beside it (``<name>.sha256``) with its
size, modification time and inode; a use whose file still has those three takes it as it
is (nothing has written to it since), any other hashes it and rebuilds it unless the
sha256 is the same. Hashing every load would cost a read of the file (sha256 at ~1 GB/s:
0.55 s for fp32 SmolLM2, whose load takes ~1 s). A file changed under the file system
(a disk's own error) keeps its modification time and is not caught, as for most caches.
So that the modification time stays the publication's, `mark_used` marks the kept
digest, not the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)

LIMIT_ENV = "EDGEPORT_CACHE_MAX"
DEFAULT_LIMIT = 8 << 30
BUILDING_SUFFIX = ".building"
SEAL_SUFFIX = ".sha256"  # beside each cached file: its sha256, size, mtime and inode when published
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
    """The finished files of cache ``kind``, least recently used first (their seals aside)."""
    found = []
    for path in _files(cache_dir() / kind):
        if not path.name.endswith((BUILDING_SUFFIX, SEAL_SUFFIX)):
            stat = _stat(path)
            if stat is not None:
                seal = _stat(_seal_path(path))
                found.append(Entry(path, stat.st_size, (seal or stat).st_mtime))
    return sorted(found, key=lambda e: e.used)


def mark_used(path: Path) -> None:
    """Record that a load used ``path`` (`make_room` deletes the least recently used
    first): its seal's modification time, or the file's where it has none."""
    for marked in (_seal_path(path), path):
        try:
            os.utime(marked)
            return
        except FileNotFoundError:
            continue
        except OSError:
            return  # read-only cache: the order is a preference, not a promise


def seal(path: Path) -> None:
    """Keep the sha256 of ``path``, a file just published whole, beside it with the facts
    `usable` compares."""
    digest, stat = _sha256(path), _stat(path)
    if digest is not None and stat is not None:
        _Seal.of(digest, stat).keep(path)


def usable(path: Path) -> bool:
    """Whether cached ``path`` is there and intact, to be used as it is. A damaged one is
    deleted, with a warning, for its user to build it again."""
    stat = _stat(path)
    if stat is None:
        return False
    if _intact(path, stat):
        return True
    log.warning("the cached file %s is damaged (its content is not what was built): building it again", path)
    _delete(path)
    return False


@dataclass(frozen=True)
class _Seal:
    """What was kept of a cached file when it was published (or first checked)."""

    sha256: str
    size: int
    mtime_ns: int
    inode: int

    @staticmethod
    def of(sha256: str, stat: os.stat_result) -> "_Seal":
        return _Seal(sha256, stat.st_size, stat.st_mtime_ns, stat.st_ino)

    def keep(self, path: Path) -> None:
        """Write this seal beside ``path``."""
        _write_atomically(_seal_path(path), f"{self.sha256} {self.size} {self.mtime_ns} {self.inode}")

    def matches(self, stat: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.inode) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)

    @staticmethod
    def read(path: Path) -> "_Seal | None":
        try:
            digest, size, mtime_ns, inode = path.read_text().split()
            return _Seal(digest, int(size), int(mtime_ns), int(inode))
        except (OSError, UnicodeDecodeError, ValueError):
            return None


def _intact(path: Path, stat: os.stat_result) -> bool:
    """Whether ``path`` holds what was published. A file unchanged since it was sealed
    (size, modification time, inode) is taken as it is; any other is hashed, and kept
    when its sha256 is the sealed one (re-sealed). A file with no seal (the native runner
    publishes files; an edgeport before seals did) is sealed now: files are published
    whole (renamed into place), so one with no seal can only have been damaged since,
    which this cannot tell. An unreadable file is not intact."""
    kept = _Seal.read(_seal_path(path))
    if kept is not None and kept.matches(stat):
        return True
    digest = _sha256(path)
    if digest is None:
        return False
    if kept is not None and kept.sha256 != digest:
        return False
    _Seal.of(digest, stat).keep(path)
    return True


def make_room(kind: str, keep: Path) -> list[Path]:
    """Delete cache ``kind``'s least recently used files until it holds at most
    `size_limit` bytes, never ``keep`` (the file just added or about to be), and its
    ``*.building`` files older than a day; returns the paths deleted."""
    limit = size_limit()
    deleted = [path for path in _files(cache_dir() / kind) if _stale_build(path) and _delete(path)]
    deleted += [path for path in _files(cache_dir() / kind) if _orphan_seal(path) and _delete(path)]
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
    """Delete ``path`` and, for a cached file, its seal."""
    try:
        path.unlink()
    except OSError:
        return False
    if not path.name.endswith((BUILDING_SUFFIX, SEAL_SUFFIX)):
        with contextlib.suppress(OSError):
            _seal_path(path).unlink()
    return True


def _seal_path(path: Path) -> Path:
    return path.with_name(path.name + SEAL_SUFFIX)


def _orphan_seal(path: Path) -> bool:
    return path.name.endswith(SEAL_SUFFIX) and not path.with_name(path.name[: -len(SEAL_SUFFIX)]).exists()


def _sha256(path: Path) -> str | None:
    """``path``'s sha256, read through a map whose pages are let go as they are hashed;
    None when it cannot be read."""
    from .mapped_file import map_file, sha256_of

    try:
        mapped = map_file(str(path))
    except (OSError, ValueError):
        return None
    return sha256_of(memoryview(mapped))


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a read-only cache keeps no seal)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}{BUILDING_SUFFIX}")
    try:
        partial.write_text(text + "\n")
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
