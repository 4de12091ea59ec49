"""Weight compression of a converted ML program, by coremltools, and what the spec then holds.

Each scheme is one pass over the MLModel `convert` made, coremltools' own but for int4:

| scheme | pass | weights in the spec |
|---|---|---|
| int8 | `linear_quantize_weights`, linear_symmetric, per output channel | int8 + a scale per channel |
| int4-weight | edgeport's (int4_blocks.py: coremltools' symmetric int4 loses half of an LLM's tokens) | uint4 + a scale and an offset per block of `group_size` inputs; a table read by a gather: int8 + a scale per row |
| palettize4 / palettize6 | `palettize_weights`, k-means, one table per tensor | 4/6-bit indices + a table of 16/64 values |

(int8's activations are quantized before conversion: quantize.py.) As coremltools does
by default, a weight of 2,048 elements or fewer stays float (`WEIGHT_THRESHOLD`): its
table or scales would cost about what they save. The program's buffers stay float
whatever their size: they hold tables, not learned weights (an LLM's rotary cos/sin, whose
int4 rounding would move every position).

Per-block int4 is an iOS18/macOS15 op (`constexpr_blockwise_shift_scale` with block
sizes); an older `minimum_deployment_target` is refused with the option to set.

`compressed_weights` reads back from a saved package which constexpr ops hold the
weights, with their storage dtype and shape, and `expanded_weights` the values Core ML
expands its per-block weights to: what Linux can check of a model only macOS can run
(the tests compare them with the float weights; bench/llm_npu.py runs an LLM's in torch).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

import edgeport

from . import int4_blocks, package, toolchain

if TYPE_CHECKING:
    from torch.export import ExportedProgram

WEIGHT_THRESHOLD = 2048  # coremltools' default: smaller weights stay float
PER_BLOCK_TARGET = "iOS18"  # the first target with per-block int4 (constexpr_blockwise_shift_scale)
SCHEMES = ("int8", "int4-weight", "palettize4", "palettize6")
PALETTE_BITS = {"palettize4": 4, "palettize6": 6}


def _config(ct: ModuleType, scheme: str) -> Any:
    """coremltools' configuration of a scheme it compresses (int8, palettize4/6)."""
    cto = ct.optimize.coreml
    if scheme == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
    else:
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS[scheme], granularity="per_tensor",
                                    weight_threshold=WEIGHT_THRESHOLD)
    return cto.OptimizationConfig(global_config=op)


def _buffer_constants(mlmodel: Any, program: ExportedProgram) -> list[str]:
    """The MIL constants that hold ``program``'s buffers: coremltools names each after its
    placeholder, with "_to_fp16" once cast for fp16 compute."""
    from torch.export.graph_signature import InputKind

    buffers = {s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.BUFFER}
    return [op.name for function in mlmodel._mil_program.functions.values() for op in function.operations
            if op.op_type == "const" and op.name.removesuffix("_to_fp16") in buffers]


def check_target(ct: ModuleType, scheme: str, target: str) -> None:
    """Refuse a deployment target the scheme's ops do not exist on."""
    members = ct.target.__members__
    if scheme == "int4-weight" and members[target] < members[PER_BLOCK_TARGET]:
        raise edgeport.BackendError(
            f"coreml: per-block int4 weights need {PER_BLOCK_TARGET}/macOS15 (constexpr_blockwise_shift_scale); "
            f"the partition targets {target}",
            hint=f"export with --option coreml.minimum_deployment_target={PER_BLOCK_TARGET}",
        )


@contextlib.contextmanager
def _discarding(mlmodel: Any) -> Iterator[None]:
    """Delete the uncompressed model's temporary package once the block has made the
    compressed one from it (`package.discard`)."""
    try:
        yield
    finally:
        package.discard(mlmodel)


def compress_weights(ct: ModuleType, mlmodel: Any, scheme: str, group_size: int, program: ExportedProgram) -> Any:
    """`mlmodel`, converted from ``program``, with its weights compressed for `scheme` (one
    of `SCHEMES`). The program's buffers stay float: they are tables, not learned weights
    (an LLM's rotary cos/sin: in int4 every position would move)."""
    buffers = _buffer_constants(mlmodel, program)
    with toolchain.quiet(), _discarding(mlmodel):
        try:
            if scheme == "int4-weight":
                return int4_blocks.compress(mlmodel, group_size, buffers, WEIGHT_THRESHOLD)
            config = _config(ct, scheme)
            for name in buffers:
                config.set_op_name(name, None)
            if scheme in PALETTE_BITS:
                return ct.optimize.coreml.palettize_weights(mlmodel, config)
            return ct.optimize.coreml.linear_quantize_weights(mlmodel, config)
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


def expanded_weights(program: Any) -> dict[str, np.ndarray]:
    """Each per-block quantized weight of a MIL program (`package.validate`'s result),
    expanded as Core ML expands it when it loads the model: (stored value - offset) x its
    block's scale, in fp32, by the constexpr op's name."""
    out = {}
    for function in program.functions.values():
        for op in function.operations:
            if op.op_type != "constexpr_blockwise_shift_scale":
                continue
            values = op.inputs["data"].val.astype(np.float32)
            offset = op.inputs.get("offset")
            if offset is not None:
                values = values - _blocks(offset.val.astype(np.float32), values.shape)
            out[op.name] = values * _blocks(op.inputs["scale"].val.astype(np.float32), values.shape)
    return out


def _blocks(per_block: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A value per block repeated over its block: each axis of ``per_block`` divides ``shape``'s."""
    for axis, (blocks, size) in enumerate(zip(per_block.shape, shape)):
        per_block = np.repeat(per_block, size // blocks, axis=axis)
    return per_block
