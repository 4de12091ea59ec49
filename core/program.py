"""The .edgeport program: what `edgeport.export` returns and `edgeport.load` reads.

On disk it is one zip, stored uncompressed so artifacts can be memory-mapped:
``manifest.json``, ``manifest.json.sha256`` (its digest), ``artifacts/…`` (backend
bytes), ``portable/…`` and ``reference/…`` (torch programs as JSON graphs + raw
tensors), ``state/…`` (initial program state), and any file an application adds, each
listed in the manifest with its size and sha256. docs/program-format.md describes it.

Loading maps the file once (`mapped_file`): a loaded program's files are read-only
views of the map, not copies. It checks the zip, the manifest's digest, schema and
plan, and every file's size and checksum (streamed, chunk by chunk) before anything
runs, and never unpickles; any problem is one `ProgramError` that names it. The
digest catches edits and damage, not a malicious rewrite: anyone can recompute a
sha256, and version 1 files (still read) have none.

Nothing here imports torch: where torch is not installed, a program of delegate steps
loads and runs, and one with portable (torch) steps is refused at load, naming them
(`torch_steps`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import mmap
import os
import struct
import threading
import zipfile
import zlib
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .arrays import torch_installed
from .errors import InputError, ProgramError
from .manifest import FORMAT, VERSION, FileInfo, Manifest, MethodPlan, manifest_from_json
from .manifest_schema import (MAX_MANIFEST_BYTES, OWN_ENTRIES, ManifestError, UnknownFieldError, check_manifest,
                              is_safe_path, parse_manifest_json)
from .mapped_file import Buffer, map_file, sha256_of
from .plan_check import check_plan
from .plugins import Registry, registry_or_default
from .torch_steps import needs_torch, portable_steps

if TYPE_CHECKING:
    from .runtime import RunResult, Runtime

MANIFEST, DIGEST = OWN_ENTRIES  # DIGEST (version 2): the sha256 of manifest.json's exact bytes


class Program:
    """An exported model: a manifest (the plan) and the files it names.

    Call it like the model: ``prog(*inputs)`` runs "forward" (or the only method);
    ``prog.run(*inputs, method="decode", profile=True)`` returns outputs with timings.
    """

    def __init__(self, manifest: Manifest, files: Mapping[str, Buffer], *, reference: bool = False,
                 registry: Registry | None = None) -> None:
        self.manifest = manifest
        self.files = dict(files)
        self._reference = reference
        self._registry = registry_or_default(registry)
        self._runtime: Runtime | None = None
        self._loading = threading.Lock()  # threads whose first calls overlap load once

    @property
    def methods(self) -> list[str]:
        return list(self.manifest.methods)

    @property
    def reference(self) -> bool:
        """Loaded to run a delegate step whose backend cannot run here on its torch
        reference (`load`'s ``reference``): such a run needs torch values."""
        return self._reference

    def report(self, method: str | None = None) -> dict[str, Any]:
        """The placement report of a method: every node's backend and reasons."""
        name = method or self.default_method
        if name not in self.manifest.report:
            raise self._no_method(name)
        return self.manifest.report[name]

    def plan(self, method: str | None = None) -> MethodPlan:
        """The steps a method runs (the default method's if None)."""
        name = method or self.default_method
        if name not in self.manifest.methods:
            raise self._no_method(name)
        return self.manifest.methods[name]

    def _no_method(self, name: str) -> InputError:
        return InputError(f"program has no method {name!r}; it has {', '.join(self.methods)}",
                          hint="name one of those (method=NAME)")

    @property
    def default_method(self) -> str:
        """The method ``prog(...)`` runs: "forward", or the only method there is."""
        if "forward" in self.manifest.methods or len(self.manifest.methods) != 1:
            return "forward"
        return next(iter(self.manifest.methods))

    def runtime(self, arrays: str = "auto") -> Runtime:
        """Load every artifact once (on first use, by one thread while any others wait)
        and keep the loaded executables.

        ``arrays`` is what the first call decides the values of every run are: "auto",
        torch tensors where torch is installed and numpy arrays where not; "numpy",
        numpy arrays even where torch is installed, so running never imports torch
        (a program of delegate steps only: a portable step is a torch program). Later
        calls get the runtime already loaded, whatever they ask."""
        runtime = self._runtime
        if runtime is None:
            with self._loading:
                if self._runtime is None:
                    from .runtime import Runtime, values_of

                    self._runtime = Runtime(self.manifest, self.files, reference=self._reference,
                                            registry=self._registry, values=values_of(arrays, self.manifest))
                runtime = self._runtime
        return runtime

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runtime().call(self.default_method, args, kwargs)

    def run(self, *args: Any, method: str | None = None, profile: bool = False, **kwargs: Any) -> RunResult:
        return self.runtime().run(method or self.default_method, args, kwargs, profile=profile)

    def input_buffers(self, method: str | None = None) -> list[Any | None]:
        """The inputs' storage inside the delegate, to write inputs into: calling with
        them copies nothing. ExecuTorch reads a caller's tensor where it lies; LiteRT's
        interpreter reads only its own buffers, so a program of one cpu step would
        otherwise copy each input in (MobileNetV2's 602 KB image: 2-3% of an int8 call,
        bench/README.md). None for an input that has no such buffer (a method of several
        steps, a dynamic shape, a backend that offers none); see `Runtime.input_buffers`.

            image, = program.input_buffers()
            image.copy_(frame)      # or have the preprocessing write into it
            logits = program(image)
        """
        return self.runtime().input_buffers(method or self.default_method)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the program as one .edgeport zip in the current format version
        (atomically: a crash leaves no half file), with the digest of its manifest."""
        if not isinstance(path, (str, os.PathLike)):  # as `load`: None raised os.fspath's TypeError
            raise ProgramError(f"save takes the path of a .edgeport file, got {type(path).__name__}",
                               hint="pass its path as a str or pathlib.Path")
        path = os.fspath(path)
        manifest = _manifest_bytes(dataclasses.replace(self.manifest, version=VERSION))
        tmp = f"{path}.{os.getpid()}.partial"  # two processes saving to one path write a file each
        try:
            try:
                self._write_zip(tmp, manifest)
                os.replace(tmp, path)
            except BaseException:  # Ctrl-C too: a save that did not finish leaves nothing behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:  # no such folder, a folder in the way, no space, no permission
            raise ProgramError(f"cannot save the program to {path}: {exc.strerror or exc}",
                               hint="save it to a file in a folder that exists and can be written") from None

    def _write_zip(self, path: str, manifest: bytes) -> None:
        """The program's zip: its manifest, the manifest's digest, then every file, by name."""
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(_entry(MANIFEST), manifest)
            archive.writestr(_entry(DIGEST), _digest_line(hashlib.sha256(manifest).hexdigest()))
            for name in sorted(self.files):
                archive.writestr(_entry(name), self.files[name])


def _manifest_bytes(manifest: Manifest) -> bytes:
    """The manifest as saved, refused here if `load` would refuse it (e.g. an
    application's ``metadata`` that is not JSON, or nests too deep)."""
    try:
        data = json.dumps(manifest.to_json(), indent=1, sort_keys=True, allow_nan=False).encode()
        check_manifest(parse_manifest_json(data), VERSION)
    except (TypeError, ValueError) as exc:  # ManifestError is a ValueError
        raise ProgramError(f"the program cannot be saved: its manifest would not load ({exc})",
                           hint="keep Manifest.metadata to JSON values (dicts, lists, strings, finite numbers), "
                                "and the program's file names to relative paths") from None
    return data


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # same program, same bytes
    info.compress_type = zipfile.ZIP_STORED
    return info


def file_info(data: bytes) -> FileInfo:
    return FileInfo(len(data), hashlib.sha256(data).hexdigest())


# -- reading ------------------------------------------------------------------------


def load(path: str | os.PathLike[str], *, reference: bool = False, registry: Registry | None = None) -> Program:
    """Read and verify a .edgeport file. Artifacts are loaded by their backends on
    first call. ``reference=True`` runs a delegate step whose backend cannot run here
    on its torch reference instead (labelled "reference" in every result). Where torch
    is not installed, a program with portable steps is refused here (an
    `ExecutionError` naming them), not at its first call."""
    if not isinstance(path, (str, os.PathLike)):  # bytes would be taken as a file name, whole
        raise ProgramError(f"load takes the path of a .edgeport file, got {type(path).__name__}",
                           hint="pass its path as a str or pathlib.Path")
    manifest, files = read_program_file(path)
    check_runs_here(manifest)
    return Program(manifest, files, reference=reference, registry=registry)


def read_program_file(path: str | os.PathLike[str]) -> tuple[Manifest, dict[str, Buffer]]:
    """`read_program` of the file at ``path``, memory-mapped: a verified manifest and
    files (read-only views of the map), whether or not they can run here (``edgeport
    explain`` describes programs it cannot run)."""
    path = os.fspath(path)
    try:
        data = map_file(path)
    except OSError as exc:
        raise ProgramError(f"cannot read program {path}: {exc.strerror or exc}",
                           hint="pass the path of a .edgeport file (program.save(path) or `edgeport export -o` "
                                "writes one)") from None
    except ValueError as exc:  # a file that cannot be mapped (a pipe, a device)
        raise ProgramError(f"cannot read program {path}: {exc}", hint="pass a regular .edgeport file") from None
    if bytes(data[:4]) == GGUF_MAGIC:  # llama.cpp's habit: generate from the .gguf itself
        raise ProgramError(f"{path} is a GGUF model file, not a .edgeport program",
                           hint=f"export it first: edgeport llm export {path} -o model.edgeport")
    return read_program(data, source=path)


def check_runs_here(manifest: Manifest) -> None:
    """Refuse, where torch is not installed, a program with portable steps: one error
    naming each step, its ops and why no backend took them."""
    if torch_installed():
        return
    steps = portable_steps(manifest)
    if steps:
        raise needs_torch(steps)


def read_program(data: Buffer, source: str = "program") -> tuple[Manifest, dict[str, Buffer]]:
    """Verify a program file's bytes (or its memory map) and return its manifest and
    files, each a read-only view of ``data``.

    In order, so nothing is read before what bounds it is checked: the zip's entries
    (unique safe names, stored uncompressed, sizes that fit the file), the manifest's
    digest (version 2), its JSON (size, depth), its schema, its plan, and last every
    file against its declared size and checksum. Any problem is one `ProgramError`.
    """
    try:
        archive, entries = _open_archive(data)
        manifest = _read_manifest(archive, entries)
        files = _read_files(archive, entries, manifest)
    except ProgramError as exc:
        raise ProgramError(f"{source}: {exc}", hint=exc.hint) from None
    return manifest, files


GGUF_MAGIC = b"GGUF"  # the first bytes of a GGUF model file
_DAMAGED = "re-export the model, or check the file was copied whole"
# an intact manifest of the newest version with a field this edgeport lacks: a newer
# edgeport added it (docs/program-format.md, "Versions"); edited files are the rarer case
_NEWER = ("a newer edgeport wrote this program: upgrade edgeport (pip install -U edgeport) to load it, or "
          "re-export the model with this one")


@contextlib.contextmanager
def _zip_errors(what: str) -> Iterator[None]:
    """zipfile meets a crafted archive with a dozen exception types (BadZipFile,
    struct.error, UnicodeDecodeError, NotImplementedError, EOFError, OverflowError, ...);
    each is the same fact for a user: the file is damaged."""
    try:
        yield
    except Exception as exc:
        raise ProgramError(f"{what} ({type(exc).__name__}: {exc})", hint=_DAMAGED) from None


_Archive = memoryview  # the whole file; each entry is a slice of it
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header (APPNOTE 4.3.7): 30 bytes
_ZIP_MAGIC = b"PK"  # every zip record's signature starts so; the writer's file opens with a local header


def _open_archive(data: Buffer) -> tuple[_Archive, dict[str, zipfile.ZipInfo]]:
    """The zip and its entries by name, refused unless every entry can be read safely:
    a unique, relative name; stored (the writer never compresses, and a compressed entry
    is how a 2 MB file inflates to gigabytes); sizes that fit inside the file; the first
    entry at the start of the file, as the writer puts it."""
    if bytes(data[:2]) != _ZIP_MAGIC:  # zipfile's own words for a text file: "seek out of range"
        raise ProgramError("not a valid .edgeport file: " + ("it is empty" if not len(data) else
                                                               "it is not a zip archive, as every edgeport program is"),
                           hint="pass a program edgeport export wrote (-o NAME.edgeport); " + _DAMAGED)
    with _zip_errors("not a valid .edgeport file (unreadable zip)"):
        # zipfile reads the central directory only, from the map itself or from a
        # BytesIO (which shares bytes, and copies any other buffer)
        infos = zipfile.ZipFile(data if isinstance(data, mmap.mmap) else io.BytesIO(data)).infolist()
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if not is_safe_path(name):
            raise ProgramError(f"unsafe path {name!r} in the archive", hint=_DAMAGED)
        if name in entries:
            raise ProgramError(f"the archive holds two entries named {name!r}", hint=_DAMAGED)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise ProgramError(f"{name} is compressed or encrypted; edgeport programs store every file as is",
                               hint=_DAMAGED)
        if info.compress_size != info.file_size:
            raise ProgramError(f"{name} declares {info.file_size} bytes but stores {info.compress_size}", hint=_DAMAGED)
        entries[name] = info
    if sum(info.file_size for info in infos) > len(data):
        raise ProgramError(f"the archive's entries claim more bytes than the file holds ({len(data)})", hint=_DAMAGED)
    first = min((info.header_offset for info in infos), default=0)
    if first != 0:  # zipfile reads the last zip it finds: of two programs joined, the second, silently
        raise ProgramError(f"not a valid .edgeport file: the zip read from it starts {first} bytes in, not at its "
                           "start (a truncated file, of which a zip stored inside was read, or another file joined "
                           "in front of the program)", hint=_DAMAGED)
    return memoryview(data), entries


def _entry_view(archive: _Archive, info: zipfile.ZipInfo) -> memoryview:
    """The stored bytes of entry ``info``: found through its local header (whose name
    must be the central directory's), and inside the file."""
    with _zip_errors(f"{info.filename} is damaged"):
        at = info.header_offset
        if at < 0 or at + _LOCAL_HEADER.size > len(archive):
            raise zipfile.BadZipFile("its local header lies outside the file")
        magic, *_, name_length, extra_length = _LOCAL_HEADER.unpack(archive[at:at + _LOCAL_HEADER.size])
        start = at + _LOCAL_HEADER.size + name_length + extra_length
        name = bytes(archive[at + _LOCAL_HEADER.size:at + _LOCAL_HEADER.size + name_length])
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if magic != b"PK\x03\x04" or name.decode(encoding) != info.orig_filename:
            raise zipfile.BadZipFile("its local header does not match the central directory")
        if start + info.file_size > len(archive):
            raise zipfile.BadZipFile("its bytes run past the end of the file")
        return archive[start:start + info.file_size]


def _read_entry(archive: _Archive, info: zipfile.ZipInfo) -> bytes:
    """A small entry (the manifest, its digest) as bytes, checked against its CRC, as
    zipfile would: what catches damage to a version-1 manifest, which has no digest."""
    content = bytes(_entry_view(archive, info))
    if zlib.crc32(content) != info.CRC:
        raise ProgramError(f"{info.filename} is damaged (its CRC does not match)", hint=_DAMAGED)
    return content


def _read_manifest(archive: _Archive, entries: Mapping[str, zipfile.ZipInfo]) -> Manifest:
    if MANIFEST not in entries:
        raise ProgramError("no manifest.json: not an edgeport program, or a truncated or damaged one", hint=_DAMAGED)
    if entries[MANIFEST].file_size > MAX_MANIFEST_BYTES:
        raise ProgramError(f"manifest.json is {entries[MANIFEST].file_size} bytes, more than a manifest may have "
                           f"({MAX_MANIFEST_BYTES})", hint=_DAMAGED)
    raw = _read_entry(archive, entries[MANIFEST])
    digest = _read_digest(archive, entries[DIGEST]) if DIGEST in entries else None
    if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
        raise ProgramError(f"manifest.json does not match its digest in {DIGEST}: it was edited or damaged",
                           hint=_DAMAGED)
    try:
        data = parse_manifest_json(raw)
    except ManifestError as exc:
        raise ProgramError(f"manifest.json is unreadable: {exc}", hint=_DAMAGED) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProgramError("manifest.json does not describe an edgeport program", hint=_DAMAGED)
    version = data.get("version")
    if type(version) is not int or version not in _HAS_DIGEST:
        raise ProgramError(
            f"format version {version!r} is not supported (this edgeport reads versions "
            f"{', '.join(map(str, _HAS_DIGEST))})",
            hint="upgrade edgeport to read programs written by newer versions",
        )
    if _HAS_DIGEST[version] != (digest is not None):
        has = "has" if digest is not None else "lacks"
        raise ProgramError(f"a version-{version} program {has} {DIGEST}: the file was edited or damaged", hint=_DAMAGED)
    try:
        check_manifest(data, version)
        manifest = manifest_from_json(data)
        check_plan(manifest)
    except UnknownFieldError as exc:
        if version == VERSION:  # fields are added within the newest version only, the one save writes
            raise ProgramError(f"manifest.json uses a field this edgeport does not know: {exc}", hint=_NEWER) from None
        raise ProgramError(f"manifest.json is malformed: {exc}", hint=_DAMAGED) from None
    except ManifestError as exc:
        raise ProgramError(f"manifest.json is malformed: {exc}", hint=_DAMAGED) from None
    return manifest


def _read_digest(archive: _Archive, info: zipfile.ZipInfo) -> str:
    """The sha256 in the digest entry, written as ``sha256sum`` does (so ``sha256sum -c
    manifest.json.sha256`` checks an unzipped program)."""
    if info.file_size != len(_digest_line("0" * 64)):
        raise ProgramError(f"{DIGEST} is not a sha256 line", hint=_DAMAGED)
    line = _read_entry(archive, info)
    digest = line[:64].decode("ascii", "replace")
    if line != _digest_line(digest) or not all(c in "0123456789abcdef" for c in digest):
        raise ProgramError(f"{DIGEST} is not a sha256 line", hint=_DAMAGED)
    return digest


def _digest_line(digest: str) -> bytes:
    return f"{digest}  {MANIFEST}\n".encode()


def _read_files(archive: _Archive, entries: Mapping[str, zipfile.ZipInfo], manifest: Manifest) -> dict[str, memoryview]:
    """Every entry but the manifest's own is a listed file of the declared size and
    checksum; each comes back as a view of the archive, not a copy."""
    for name in entries:
        if name not in manifest.files and name not in (MANIFEST, DIGEST):
            raise ProgramError(f"{name} is in the archive but not listed in the manifest", hint=_DAMAGED)
    for name, expected in manifest.files.items():
        if name not in entries:
            raise ProgramError(f"missing file {name}", hint=_DAMAGED)
        if entries[name].file_size != expected.size:
            raise ProgramError(f"{name} is {entries[name].file_size} bytes, the manifest says {expected.size}",
                               hint=_DAMAGED)
    files: dict[str, memoryview] = {}
    for name, expected in manifest.files.items():
        content = _entry_view(archive, entries[name])
        if sha256_of(content) != expected.sha256:
            raise ProgramError(f"checksum mismatch for {name}: the file was modified or damaged", hint=_DAMAGED)
        files[name] = content.toreadonly()
    return files


# The reader of each format version this edgeport reads: whether its files carry the
# manifest digest, and its schema, `manifest_schema.SCHEMAS[version]`.
_HAS_DIGEST: dict[int, bool] = {1: False, 2: True}
