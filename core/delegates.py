"""A delegate step of a saved program, as its backend gets it back: the `Artifact`
rebuilt from the manifest, loaded, and labelled with where it runs on this machine.

One definition shared by everything that loads a saved partition (the runtime and
``edgeport check``), so a partition is loaded, and named in every report, one way.
"""

from __future__ import annotations

from typing import Mapping

from .backend import Artifact, Availability, Backend, Executable, options_from_dict
from .errors import EdgeportError, ExecutionError
from .manifest import Manifest, Step


def step_artifact(manifest: Manifest, files: Mapping[str, bytes], step: Step, backend: Backend) -> Artifact:
    """The artifact of delegate ``step`` as ``backend.compile`` returned it, with its options rebuilt."""
    info = manifest.artifacts[step.artifact]
    return Artifact(
        data=files[step.artifact],
        suffix="." + step.artifact.rsplit(".", 1)[-1],
        metadata=info.metadata,
        options=options_from_dict(backend, info.options),
    )


def load_step(manifest: Manifest, files: Mapping[str, bytes], step: Step, backend: Backend) -> Executable:
    """``backend.load`` of the step's artifact; a failure that is not an `EdgeportError`
    becomes an `ExecutionError` naming the backend and the partition."""
    try:
        return backend.load(step_artifact(manifest, files, step, backend))
    except EdgeportError:
        raise
    except Exception as exc:
        raise ExecutionError(
            f"backend {backend.name!r} failed to load partition {step.partition}: {type(exc).__name__}: {exc}"
        ) from exc


def run_label(backend: str, availability: Availability) -> str:
    """How a step of ``backend`` runs here: "cpu" on the real device, else "qualcomm: simulator"."""
    return backend if availability.runs_on == "device" else f"{backend}: {availability.runs_on}"
