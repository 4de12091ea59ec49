"""Take .edgeport files apart and put them back, for tests that damage or edit programs.

`pack` writes the way `Program.save` does (stored entries, fixed dates, manifest, its
digest, then the files in order), so a test can change one thing in a program and
re-seal it: the loader then sees an edit that no checksum catches, and its schema and
plan checks must.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from typing import Any

MANIFEST = "manifest.json"
DIGEST = "manifest.json.sha256"


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest (as JSON) and every other file of a program's bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        files = {n: archive.read(n) for n in archive.namelist() if n not in (MANIFEST, DIGEST)}
    return manifest, files


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode()


def digest_line(manifest: bytes) -> bytes:
    return f"{hashlib.sha256(manifest).hexdigest()}  {MANIFEST}\n".encode()


def pack(manifest: dict[str, Any] | bytes, files: dict[str, bytes], *, relist: bool = False,
         digest: bool = True) -> bytes:
    """A program's bytes, written like `Program.save`. ``relist`` first rewrites the
    manifest's ``files`` to the sizes and checksums of ``files``; ``digest=False``
    leaves out the digest entry (as version 1 did)."""
    if relist:
        assert isinstance(manifest, dict)
        manifest = {**manifest, "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                          for n, d in files.items()}}
    text = manifest if isinstance(manifest, bytes) else manifest_bytes(manifest)
    entries = [(MANIFEST, text)] + ([(DIGEST, digest_line(text))] if digest else [])
    return write_entries(entries + sorted(files.items()))


def write_entries(entries: list[tuple[str | zipfile.ZipInfo, bytes]], comment: bytes = b"") -> bytes:
    """A zip of exactly these entries (duplicates and all), stored unless a ZipInfo says otherwise."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the tests that do it mean it
        for name, data in entries:
            # compresslevel 1: a compressed entry is there to be refused, fast to build beats small
            archive.writestr(name if isinstance(name, zipfile.ZipInfo) else stored(name), data, compresslevel=1)
        archive.comment = comment
    return buffer.getvalue()


def stored(name: str, compress_type: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress_type
    return info


def read_entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def patch_central(data: bytes, name: str, offset: int, value: bytes) -> bytes:
    """Overwrite bytes of ``name``'s record in the zip's central directory (what zipfile
    reads entries from): e.g. offset 8, the flag bits; 20, the compressed and real sizes."""
    patched = bytearray(data)
    at = patched.find(b"PK\x01\x02")
    while patched[at + 46: at + 46 + len(name)] != name.encode():
        at = patched.find(b"PK\x01\x02", at + 4)
        assert at >= 0, f"{name} is not in the archive"
    patched[at + offset: at + offset + len(value)] = value
    return bytes(patched)


def patch_central_sizes(data: bytes, name: str, size: int) -> bytes:
    """Declare ``size`` as both the compressed and the real size of ``name``."""
    return patch_central(data, name, 20, size.to_bytes(4, "little") * 2)
