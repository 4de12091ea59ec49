"""A delegate step of a saved program, as its backend gets it back: the `Artifact`
rebuilt from the manifest, loaded, and labelled with where it runs on this machine.

One definition shared by everything that loads a saved partition (the runtime and
``edgeport check``), so a partition is loaded, and named in every report, one way.
"""

from __future__ import annotations

from typing import Any, Mapping

from .backend import Artifact, Availability, Backend, Entries, Executable, options_from_dict, validate_options
from .contract import checked_version
from .errors import BackendError, EdgeportError, ProgramError, described
from .manifest import Manifest, Step
from .mapped_file import Buffer


def step_artifact(manifest: Manifest, files: Mapping[str, Buffer], step: Step, backend: Backend) -> Artifact:
    """The artifact of delegate ``step`` as ``backend.compile`` returned it, with its options rebuilt."""
    info = manifest.artifacts[step.artifact]
    return Artifact(
        data=files[step.artifact],
        suffix="." + step.artifact.rsplit(".", 1)[-1],
        metadata=info.metadata,
        options=saved_options(backend, step.artifact, info.options),
    )


def saved_options(backend: Backend, path: str, values: dict[str, Any]) -> Any:
    """The options an artifact was compiled with, as its backend reads them.

    The manifest holds each as its field's type (`options_to_dict` wrote them). Options
    the backend refuses, out of their declared range, or of another type
    (``"threads": 4.0``) mean the manifest was edited or written by another version of
    the backend: a `ProgramError`, before the backend sees them. Choices only a
    toolchain can list were checked at export and are not asked again here.
    """
    hint = "re-export the model with this version of the backend"
    try:
        options = validate_options(backend, options_from_dict(backend, values), toolchain_choices=False)
    except BackendError as exc:
        raise ProgramError(f"artifact {path} records options backend {backend.name!r} does not accept: {exc}",
                           hint=exc.hint or hint) from None
    return options


def load_step(manifest: Manifest, files: Mapping[str, Buffer], step: Step, backend: Backend) -> Executable:
    """``backend.load`` of the step's artifact.

    The artifact's bytes and metadata passed every check of the file (its checksums
    too: the file is whole), and the backend says it can run here, so a load that
    fails with anything but an `EdgeportError` is the backend's own failure: a bug of
    the plugin, its device or driver missing, or content another version of it wrote. A
    `ProgramError` naming the backend and the partition; its hint says whose problem it
    is (re-exporting rarely helps: "device not found" was told to)."""
    try:
        loaded = backend.load(step_artifact(manifest, files, step, backend))
    except EdgeportError:
        raise
    except Exception as exc:
        compiled_by = manifest.artifacts[step.artifact].backend_version
        installed = _installed_version(backend)
        if installed != compiled_by:  # the likeliest cause: say it first
            raise ProgramError(
                f"backend {backend.name!r} cannot load partition {step.partition}: {described(exc)}; it was "
                f"compiled by {backend.name} {compiled_by}, and this is {backend.name} {installed}",
                hint=f"re-export the model with {backend.name} {installed}, or run it where {backend.name} "
                     f"{compiled_by} is installed; if that version should read it, it is a bug of the plugin",
            ) from exc
        raise ProgramError(
            f"backend {backend.name!r} cannot load partition {step.partition}: {described(exc)}",
            hint=f"{backend.name}'s load() raised this: a problem of the plugin or of its device or driver (the "
                 "file passed its checks); --debug (EDGEPORT_RAISE_ERRORS=1) shows where, for the plugin's authors",
        ) from exc
    method = "entry" if step.entry is not None else "run"  # a merged artifact's entries, or one executable
    if not callable(getattr(loaded, method, None)):  # the plugin's mistake, not the file's
        raise BackendError(f"backend {backend.name!r}: load() returned {type(loaded).__name__}, which has no "
                           f"{method}() method",
                           hint="return an executable with run(inputs) (or, for a merged artifact, entry(i))")
    return loaded


def _installed_version(backend: Backend) -> str:
    """The backend's version here, as its artifacts record it; text saying so when reading
    it fails (the load error being reported matters more)."""
    try:
        return checked_version(backend)
    except BackendError as exc:
        return f"(version unknown: {exc})"


def executable_of(loaded: Any, step: Step) -> Executable:
    """The executable of ``step``: what its backend loaded, or that merged artifact's
    entry ``step.entry`` (`Backend.merge`: several methods' partitions in one artifact)."""
    if step.entry is None:
        return loaded
    if not isinstance(loaded, Entries):
        raise ProgramError(f"step of partition {step.partition} names entry {step.entry} of {step.artifact}, "
                           "which its backend did not load as a merged artifact")
    return loaded.entry(step.entry)


def run_label(backend: str, availability: Availability) -> str:
    """How a step of ``backend`` runs here: "cpu" on the real device, else "qualcomm: simulator"."""
    return backend if availability.runs_on == "device" else f"{backend}: {availability.runs_on}"
