"""A stateful ML program: a method whose mutated buffers (a KV cache) become Core ML states.

From iOS 18 / macOS 15 a Core ML model can hold state: tensors the model reads and
updates in place across predictions (``MLState``), so a KV cache never crosses the
model's interface. coremltools turns each buffer an ExportedProgram mutates into a
``ct.StateType`` (fp16: the only state dtype Core ML has) and each write into it into
``read_state`` / ``slice_update`` / ``write_state`` ops.

`compile_stateful` converts a whole captured method that way (not a partition: the
partitioner's partitions take state as inputs and return new rows, which is the
stateless form edgeport's runtime runs). Off macOS nothing can run the result, so it is
checked where it is made: the spec declares one state per mutated buffer with its shape,
the ML program re-loads and type-checks (`package.validate`), every state is written
back, and the inputs and outputs are the method's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

import edgeport

from . import compress, package, toolchain
from .options import CoreMLOptions, convert_arguments

if TYPE_CHECKING:
    from torch.export import ExportedProgram

FIRST_STATEFUL_TARGET = "iOS18"  # Core ML states start at iOS 18 / macOS 15
_STATE_WRITE = "write_state"


@dataclass(frozen=True)
class State:
    """One Core ML state: the buffer it holds (its name in the module) and its type."""

    buffer: str  # "decoder.layers.0.k_cache"
    name: str  # the Core ML state's name: "decoder_layers_0_k_cache"
    shape: tuple[int, ...]
    dtype: str  # "FLOAT16"


def compile_stateful(program: ExportedProgram, options: CoreMLOptions, output_names: list[str]) -> edgeport.Artifact:
    """The stateful ML program of a whole captured method, checked; raises
    `edgeport.BackendError` when coremltools cannot convert it or the checks fail."""
    ct = toolchain.coremltools()
    _check_target(ct, options)
    if options.scheme != "none":
        compress.check_target(ct, options.scheme, options.minimum_deployment_target)
    arguments = convert_arguments(ct, options)
    outputs = [ct.TensorType(name=name, dtype=np.float32) for name in output_names]  # logits stay fp32
    with toolchain.quiet():
        try:
            mlmodel = ct.convert(program, outputs=outputs, skip_model_load=True, **arguments)
        except Exception as error:  # coremltools raises anything from ValueError to AssertionError
            raise edgeport.BackendError(
                f"coremltools could not convert the stateful method: {type(error).__name__}: {error}".splitlines()[0],
                hint="export the stateless form (the program's own steps), or report the method's graph",
            ) from error
    if options.scheme != "none":
        mlmodel = compress.compress_weights(ct, mlmodel, options.scheme, options.group_size, program)
    data = package.package_bytes(mlmodel)
    states = check_stateful(data, program)
    description = package.describe(mlmodel.get_spec())
    return edgeport.Artifact(data=data, suffix=".mlpackage.zip", metadata={
        "coremltools": toolchain.installed_version(),
        "minimum_deployment_target": options.minimum_deployment_target,
        "states": [vars(s) | {"shape": list(s.shape)} for s in states],
        "inputs": [_feature(f) for f in description.inputs],
        "outputs": [_feature(f) for f in description.outputs],
        "mil_ops": description.mil_ops,
        "weight_bytes": package.weight_bytes(data),
        **({"scheme": options.scheme} if options.scheme != "none" else {}),
        "runs_on": "macOS 15 / iOS 18 and later only (Core ML's MLState)",
    })


def check_stateful(data: bytes, program: ExportedProgram) -> list[State]:
    """What can be checked off macOS: one state per mutated buffer, of its shape; the
    program re-loads and type-checks; each state is written back; the inputs are the
    method's user inputs, in order. Returns the states."""
    ct = toolchain.coremltools()
    with package.opened(data) as path:
        spec = package.load_spec(path)
        package.validate(path)
    declared = {s.name: s for s in spec.description.state}
    buffers = _mutated_buffers(program)
    states = []
    for buffer, shape in buffers.items():
        name = buffer.replace(".", "_")
        found = declared.get(name)
        if found is None:
            raise edgeport.BackendError(f"coremltools made no state for mutated buffer {buffer} "
                                        f"(states: {', '.join(declared) or 'none'})")
        array = found.type.stateType.arrayType
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        if tuple(array.shape) != shape:
            raise edgeport.BackendError(f"state {name} is {tuple(array.shape)}, buffer {buffer} is {shape}")
        states.append(State(buffer, name, shape, dtype))
    writes = package.describe(spec).mil_ops.get(_STATE_WRITE, 0)
    if writes != len(states):
        raise edgeport.BackendError(f"the ML program writes its states {writes} times, expected once per state "
                                    f"({len(states)})")
    inputs = [f.name for f in spec.description.input]
    if inputs != list(program.graph_signature.user_inputs):
        raise edgeport.BackendError(f"the stateful ML program takes {inputs}, the method "
                                    f"{list(program.graph_signature.user_inputs)}")
    return states


def _check_target(ct: Any, options: CoreMLOptions) -> None:
    targets = ct.target.__members__
    if targets[options.minimum_deployment_target] < targets[FIRST_STATEFUL_TARGET]:
        raise edgeport.BackendError(
            f"Core ML states need iOS 18 / macOS 15; the deployment target is {options.minimum_deployment_target}",
            hint=f"pass --option coreml.minimum_deployment_target={FIRST_STATEFUL_TARGET} (or macOS15)",
        )


def _mutated_buffers(program: ExportedProgram) -> dict[str, tuple[int, ...]]:
    """Each buffer the method mutates, with its shape, in signature order."""
    mutated = set(program.graph_signature.buffers_to_mutate.values())
    shapes = {name: tuple(t.shape) for name, t in {**program.state_dict, **program.constants}.items()}
    return {spec.target: shapes[spec.target] for spec in program.graph_signature.input_specs
            if spec.target in mutated}


def _feature(feature: package.Feature) -> dict[str, Any]:
    return {"name": feature.name, "shape": list(feature.shape), "dtype": feature.dtype}
