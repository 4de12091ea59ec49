"""Weight compression of a converted ML program, by coremltools, and what the spec then holds.

Each scheme is one call of `coremltools.optimize.coreml` on the MLModel `convert` made:

| scheme | call | weights in the spec |
|---|---|---|
| int8 | `linear_quantize_weights`, linear_symmetric, per output channel | int8 + a scale per channel |
| int4-weight | `linear_quantize_weights`, linear_symmetric, per block of `group_size` inputs | int4 + a scale per block |
| palettize4 / palettize6 | `palettize_weights`, k-means, one table per tensor | 4/6-bit indices + a table of 16/64 values |

(int8's activations are quantized before conversion: quantize.py.) As coremltools does
by default, a weight of 2,048 elements or fewer stays float (`WEIGHT_THRESHOLD`): its
table or scales would cost about what they save.

Per-block int4 is an iOS18/macOS15 op (`constexpr_blockwise_shift_scale` with block
sizes); an older `minimum_deployment_target` is refused with the option to set.

`compressed_weights` reads back from a saved package which constexpr ops hold the
weights, with their storage dtype and shape: what a Linux test can check of a model
only macOS can run.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import edgeport

from . import toolchain

WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller weights stay float
PER_BLOCK_TARGET = "iOS18"  # the first target with per-block int4 (constexpr_blockwise_shift_scale)
SCHEMES = ("int8", "int4-weight", "palettize4", "palettize6")
PALETTE_BITS = {"palettize4": 4, "palettize6": 6}


def _config(ct: ModuleType, scheme: str, group_size: int) -> Any:
    cto = ct.optimize.coreml
    if scheme == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
    elif scheme == "int4-weight":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=group_size, weight_threshold=WEIGHT_THRESHOLD)
    else:
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS[scheme], granularity="per_tensor",
                                    weight_threshold=WEIGHT_THRESHOLD)
    return cto.OptimizationConfig(global_config=op)


def check_target(ct: ModuleType, scheme: str, target: str) -> None:
    """Refuse a deployment target the scheme's ops do not exist on."""
    members = ct.target.__members__
    if scheme == "int4-weight" and members[target] < members[PER_BLOCK_TARGET]:
        raise edgeport.BackendError(
            f"coreml: per-block int4 weights need {PER_BLOCK_TARGET}/macOS15 (constexpr_blockwise_shift_scale); "
            f"the partition targets {target}",
            hint=f"export with --option coreml.minimum_deployment_target={PER_BLOCK_TARGET}",
        )


def compress_weights(ct: ModuleType, mlmodel: Any, scheme: str, group_size: int) -> Any:
    """`mlmodel` with its weights compressed for `scheme` (one of `SCHEMES`) by coremltools."""
    cto = ct.optimize.coreml
    config = _config(ct, scheme, group_size)
    with toolchain.quiet():
        try:
            if scheme in PALETTE_BITS:
                return cto.palettize_weights(mlmodel, config)
            return cto.linear_quantize_weights(mlmodel, config)
        except Exception as error:  # coremltools raises ValueError, AssertionError, ...
            raise edgeport.BackendError(
                f"coremltools could not compress the weights for {scheme}: {type(error).__name__}: {error}",
                hint="export this partition without --quantize, or with another scheme",
            ) from error


@dataclass(frozen=True)
class CompressedWeight:
    """One weight as the saved ML program stores it: the constexpr op that expands it,
    the dtype and shape of its stored values (indices for a palette), and of its table."""

    op: str  # "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense", ...
    name: str
    dtype: str  # MIL dtype of the stored values: "int8", "int4", "uint4", "uint6", ...
    shape: tuple[int, ...]
    lut_shape: tuple[int, ...] | None = None  # palettized: the lookup table's shape


_VALUES = ("data", "indices", "quantized_data")  # the attribute/input holding the stored values


def compressed_weights(program: Any) -> list[CompressedWeight]:
    """The constexpr weights of a MIL program (`package.validate`'s result), in op order."""
    out = []
    for function in program.functions.values():
        for op in function.operations:
            if not op.op_type.startswith("constexpr_"):
                continue
            values = next((op.inputs[k] for k in _VALUES if k in op.inputs), None)
            if values is None:
                continue
            lut = op.inputs.get("lut")
            out.append(CompressedWeight(
                op.op_type, op.name, _dtype(values), tuple(int(d) for d in values.shape),
                tuple(int(d) for d in lut.shape) if lut is not None else None,
            ))
    return out


def _dtype(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)
