"""The compile options of the Core ML backend, and their coremltools values."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import edgeport

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
PRECISIONS = ("fp16", "fp32")
OLDEST_ML_PROGRAM_TARGET = "iOS15"  # ML programs (the only format we produce) start at iOS15/macOS12


def ml_program_targets() -> list[str]:
    """The `coremltools.target` names an ML program can be deployed to (iOS15/macOS12 on)."""
    from .toolchain import coremltools

    targets = coremltools().target.__members__
    return [name for name, target in targets.items() if target >= targets[OLDEST_ML_PROGRAM_TARGET]]


@dataclass(frozen=True)
class CoreMLOptions:
    """How coremltools converts a partition, and which compute units Core ML may use.

    ``minimum_deployment_target`` is a `coremltools.target` name (``iOS17``,
    ``macOS14``, ...): the oldest OS the model must load on. Newer targets unlock newer
    ops (e.g. a fused scaled_dot_product_attention from iOS18).
    """

    # iOS17/macOS14 (Core ML 7): the newest ops most deployed Apple devices can load.
    minimum_deployment_target: str = edgeport.option("iOS17", choices=ml_program_targets)
    # ALL lets Core ML place each op on the Neural Engine, GPU or CPU itself.
    compute_units: str = edgeport.option("ALL", choices=COMPUTE_UNITS)
    # fp16 is what the Neural Engine computes in; fp32 keeps the model off it (CPU/GPU only).
    compute_precision: str = edgeport.option("fp16", choices=PRECISIONS)
    # The quantization scheme the weights are compressed with (compress.py); edgeport sets
    # it from --quantize, and the manifest records it with the artifact.
    scheme: str = edgeport.option("none", choices=("none", "int8", "int4-weight", "palettize4", "palettize6"))
    # int4-weight: inputs per block of 4-bit weights (set from --group-size).
    group_size: int = edgeport.option(32, at_least=1)


def deployment_target(ct: ModuleType, name: str) -> Any:
    """The `coremltools.target` for ``name``; refuses names coremltools does not know
    and targets too old for an ML program (options given to `compile` directly are
    not validated)."""
    usable = ml_program_targets()
    if name not in usable:
        raise edgeport.BackendError(
            f"coreml option minimum_deployment_target={name!r} cannot hold an ML program",
            hint=f"use one of: {', '.join(usable)}",
        )
    return ct.target.__members__[name]


def convert_arguments(ct: ModuleType, options: CoreMLOptions) -> dict[str, Any]:
    """The keyword arguments of `coremltools.convert` that these options set."""
    precision = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}[options.compute_precision]
    return {
        "minimum_deployment_target": deployment_target(ct, options.minimum_deployment_target),
        "compute_units": ct.ComputeUnit[options.compute_units],
        "compute_precision": precision,
        "convert_to": "mlprogram",
    }
