"""Checks of what a backend declares and returns, made where the backend can be named:
its `version` (at registration, or when first used), its `tolerance` (by the
conformance kit and ``edgeport check``, which judge by it) and each `Artifact` it returns
(at export). Each failed later, and less clearly, at save, at load or as an internal error.

Like `edgeport.backend`, this module imports no torch.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .backend import Artifact, Backend
from .errors import BackendError


def checked_version(backend: Backend) -> str:
    """``backend.version``, refused unless it is a non-empty string: every artifact
    records it, so 1.2 or None failed at save and a raising one as an internal error.
    Read where the backend is first used (selected for an export, or by the conformance
    kit) and, when it is a plain value, at registration; a property is not called there,
    because computing it may import the backend's toolchain (qualcomm's does)."""
    try:
        version = backend.version
    except Exception as exc:
        raise BackendError(f"backend {backend.name!r}: reading its version raised {type(exc).__name__}: {exc}",
                           hint="a bug in the backend (version must return a string, never raise): "
                                "report it to its authors") from exc
    if not isinstance(version, str) or not version.strip():
        raise BackendError(f"backend {backend.name!r} has version {version!r}, not a non-empty string",
                           hint="set version to the toolchain's version as text, e.g. version = '1.2.0'")
    return version


# A float answer's error is relative to torch's largest value: an answer of all zeros is off
# by exactly 1, so a backend declaring 1 or more would pass whatever it computed.
MAX_TOLERANCE = 1.0


def checked_tolerance(backend: Backend, options: Any) -> float:
    """``backend.tolerance(options)``, refused with a `BackendError` (whose message starts
    "tolerance() ...") unless it is a number from 0 to below `MAX_TOLERANCE`: the kit and
    ``edgeport check`` compare every answer with it, so a string aborted the kit with a
    TypeError, NaN passed nothing, and 1.0 passed an answer of all zeros."""
    try:
        declared = backend.tolerance(options)
    except Exception as exc:
        raise BackendError(f"tolerance() raised {type(exc).__name__}: {exc} (it must return a number, never raise)",
                           hint=f"a bug in backend {backend.name!r}: report it to its authors") from exc
    if isinstance(declared, bool) or not isinstance(declared, (int, float)) or not declared >= 0:
        raise BackendError(f"tolerance() returned {declared!r}, not a number of 0 or more",
                           hint=f"a bug in backend {backend.name!r}: report it to its authors")
    if not declared < MAX_TOLERANCE:
        raise BackendError(f"tolerance() returned {declared!r}: an answer of all zeros is off by 1 relative, so this "
                           f"passes any answer; declare less than {MAX_TOLERANCE} (fp16 ~1e-2, compressed weights "
                           "~1e-1)", hint=f"a bug in backend {backend.name!r}: report it to its authors")
    return float(declared)


_SUFFIX = re.compile(r"(\.[A-Za-z0-9_-]+)*")  # ".tflite", ".mlpackage.zip"; "" too: no "/", no ".."


def artifact_problem(artifact: Any) -> str | None:
    """What makes ``artifact`` (what `compile` or `merge` returned) one a program file
    cannot hold, as "returned ..."; None if nothing. Checked at export, where the
    backend is named: a suffix that is a path ("/../x") or metadata that is not JSON
    (``np.int64(3)``, NaN) exported fine and then failed at save or at load."""
    if not isinstance(artifact, Artifact):
        return f"returned {type(artifact).__name__}, not an edgeport.Artifact"
    if not isinstance(artifact.data, (bytes, bytearray, memoryview)):
        return f"returned an Artifact whose data is {type(artifact.data).__name__}, not bytes"
    if not isinstance(artifact.suffix, str) or not _SUFFIX.fullmatch(artifact.suffix):
        return (f"returned an Artifact whose suffix {artifact.suffix!r} is no file extension: write one such as "
                "'.tflite' (a dot, then letters, digits, '_' or '-'; repeated for '.mlpackage.zip')")
    if not isinstance(artifact.metadata, dict):
        return f"returned Artifact.metadata of type {type(artifact.metadata).__name__}, not a dict"
    try:
        json.dumps(artifact.metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return (f"returned Artifact.metadata that is not JSON ({exc}): keep it to dicts, lists, strings, "
                "bools and finite Python numbers (int(x) of a numpy integer)")
    return None
