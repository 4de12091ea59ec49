"""The .edgeport program: what `edgeport.export` returns and `edgeport.load` reads.

On disk it is one zip, stored uncompressed so artifacts could be memory-mapped:
``manifest.json``, ``artifacts/…`` (backend bytes), ``portable/…`` and ``reference/…``
(torch programs as JSON graphs + raw tensors), ``state/…`` (initial program state).
Loading checks the format version, every path, size and checksum, and never
unpickles; any problem is one `ProgramError` that names it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import ProgramError
from .manifest import FORMAT, VERSION, FileInfo, Manifest, manifest_from_json

if TYPE_CHECKING:
    from .plugins import Registry
    from .runtime import RunResult, Runtime

MANIFEST = "manifest.json"


class Program:
    """An exported model: a manifest (the plan) and the files it names.

    Call it like the model: ``prog(*inputs)`` runs "forward" (or the only method);
    ``prog.run(*inputs, method="decode", profile=True)`` returns outputs with timings.
    """

    def __init__(self, manifest: Manifest, files: Mapping[str, bytes], *, reference: bool = False,
                 registry: Registry | None = None) -> None:
        self.manifest = manifest
        self.files = dict(files)
        self._reference = reference
        self._registry = registry
        self._runtime: Runtime | None = None
        self._loading = threading.Lock()  # threads whose first calls overlap load once

    @property
    def methods(self) -> list[str]:
        return list(self.manifest.methods)

    def report(self, method: str | None = None) -> dict[str, Any]:
        """The placement report of a method: every node's backend and reasons."""
        return self.manifest.report[method or self.default_method]

    @property
    def default_method(self) -> str:
        """The method ``prog(...)`` runs: "forward", or the only method there is."""
        if "forward" in self.manifest.methods or len(self.manifest.methods) != 1:
            return "forward"
        return next(iter(self.manifest.methods))

    def runtime(self) -> Runtime:
        """Load every artifact once (on first use, by one thread while any others wait)
        and keep the loaded executables."""
        runtime = self._runtime
        if runtime is None:
            with self._loading:
                if self._runtime is None:
                    from .runtime import Runtime

                    self._runtime = Runtime(self.manifest, self.files, reference=self._reference,
                                            registry=self._registry)
                runtime = self._runtime
        return runtime

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runtime().run(self.default_method, args, kwargs).outputs

    def run(self, *args: Any, method: str | None = None, profile: bool = False, **kwargs: Any) -> RunResult:
        return self.runtime().run(method or self.default_method, args, kwargs, profile=profile)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the program as one .edgeport zip (atomically: a crash leaves no half file)."""
        path = os.fspath(path)
        tmp = f"{path}.partial"
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(_entry(MANIFEST), json.dumps(self.manifest.to_json(), indent=1, sort_keys=True))
            for name in sorted(self.files):
                archive.writestr(_entry(name), self.files[name])
        os.replace(tmp, path)


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
    on its torch reference instead (labelled "reference" in every result)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ProgramError(f"cannot read program {path}: {exc.strerror}") from None
    manifest, files = read_program(data, source=path)
    return Program(manifest, files, reference=reference, registry=registry)


def read_program(data: bytes, source: str = "program") -> tuple[Manifest, dict[str, bytes]]:
    def fail(what: str, hint: str = "re-export the model, or check the file was copied whole") -> ProgramError:
        return ProgramError(f"{source}: {what}", hint=hint)

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise fail(f"not a valid .edgeport file (unreadable zip: {exc})") from None
    for name in names:
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name:
            raise fail(f"unsafe path {name!r} in the archive")
    if MANIFEST not in names:
        raise fail("no manifest.json: not an edgeport program, or a truncated or damaged one")
    try:
        raw = json.loads(archive.read(MANIFEST))
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise fail(f"manifest.json is unreadable ({exc})") from None
    reader = _READERS.get(raw.get("version") if isinstance(raw, dict) else None)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise fail("manifest.json does not describe an edgeport program")
    if reader is None:
        raise fail(
            f"format version {raw.get('version')!r} is not supported (this edgeport reads versions "
            f"{', '.join(map(str, sorted(_READERS)))})",
            hint="upgrade edgeport to read programs written by newer versions",
        )
    try:
        manifest = reader(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise fail(f"manifest.json is malformed ({type(exc).__name__}: {exc})") from None
    files: dict[str, bytes] = {}
    for name, expected in manifest.files.items():
        if name not in names:
            raise fail(f"missing file {name}")
        try:
            content = archive.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise fail(f"{name} is damaged ({exc})") from None
        if file_info(content) != expected:
            raise fail(f"checksum mismatch for {name}: the file was modified or damaged")
        files[name] = content
    _check_references(manifest, fail)
    return manifest, files


def _check_references(manifest: Manifest, fail: Callable[..., ProgramError]) -> None:
    """Every path the plan names must be a verified file."""
    for plan in manifest.methods.values():
        for step in plan.steps:
            paths = [step.artifact] + [f"{p}/graph.json" for p in (step.program, step.reference) if p]
            for path in paths:
                if path is not None and path not in manifest.files:
                    raise fail(f"a step of method {plan.name!r} names unknown file {path}")
            if step.kind == "portable" and not step.program:
                raise fail(f"portable step of method {plan.name!r} has no program")
            if step.kind == "delegate" and (step.artifact not in manifest.artifacts or not step.backend):
                raise fail(f"delegate step of method {plan.name!r} has no artifact entry")
    for fqn, entry in manifest.state.items():
        if entry.get("file") not in manifest.files:
            raise fail(f"state {fqn!r} names unknown file {entry.get('file')}")


_READERS: dict[int, Callable[[dict[str, Any]], Manifest]] = {VERSION: manifest_from_json}
