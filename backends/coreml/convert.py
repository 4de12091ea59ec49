"""One partition through `coremltools.convert`, with its interface pinned down.

The partition's user inputs and outputs become the Core ML model's features, named
after the partition's nodes, in the same order. Core ML has no 64-bit or boolean
features, so some dtypes travel as another "carrier" dtype (`CARRIER`); `run` casts
on the way in and out. When coremltools refuses a node, the error names that node, so
the core can leave it out and partition again (`edgeport.DeclineNodes`).
"""

from __future__ import annotations

import contextlib
import gc
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.fx import Node

import edgeport

from . import toolchain
from .options import CoreMLOptions, convert_arguments
from .support import ConverterRegistry

# The Core ML feature type each partition dtype travels as.
CARRIER = {
    torch.float32: "FLOAT32",
    torch.float16: "FLOAT16",
    torch.int64: "INT32",  # Core ML computes integers in 32 bits
    torch.int32: "INT32",
    torch.int16: "INT32",
    torch.bool: "FLOAT32",  # coremltools turns boolean features into 0.0/1.0
}
_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32}

# coremltools' wording when it has no converter for a node, or a converter raised.
_UNSUPPORTED = re.compile(r"^Unsupported fx node (?P<node>\S+), kind")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a partition, as torch sees it."""

    name: str  # the node's name in the partition (and in the whole program)
    shape: tuple[int, ...]
    dtype: torch.dtype


def _spec(node: Node) -> TensorSpec:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise edgeport.BackendError(f"partition value {node.name} is not a tensor ({type(value).__name__})")
    if not all(isinstance(d, int) for d in value.shape):
        raise edgeport.BackendError(
            f"partition value {node.name} has a symbolic shape {tuple(value.shape)}",
            hint="Core ML partitions need static shapes: export with static example inputs",
        )
    if value.dtype not in CARRIER:
        raise edgeport.BackendError(
            f"partition value {node.name} is {value.dtype}, which Core ML cannot pass in or out"
        )
    return TensorSpec(node.name, tuple(value.shape), value.dtype)


def partition_io(program: ExportedProgram) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The partition's user inputs and outputs, in order."""
    nodes = {node.name: node for node in program.graph.nodes}
    signature = program.graph_signature
    outputs = list(signature.user_outputs)
    passed_through = [name for name in outputs if name not in nodes or nodes[name].op != "call_function"]
    if passed_through or len(set(outputs)) != len(outputs):
        raise edgeport.BackendError(
            f"partition outputs {outputs} repeat a value or pass an input straight through",
            hint="a Core ML model's outputs must be distinct values computed by its ops",
        )
    _decline_int8_boundaries(nodes, signature.user_inputs, outputs)
    return [_spec(nodes[n]) for n in signature.user_inputs], [_spec(nodes[n]) for n in outputs]


def _decline_int8_boundaries(nodes: dict[str, Node], inputs: list[str], outputs: list[str]) -> None:
    """A quantized (int8) value may live inside a Core ML model, not cross its interface
    (features are float or int32): decline the node that would make it cross, the
    quantize that produces an int8 output or each reader of an int8 input."""
    def int8(name: str) -> bool:
        value = nodes[name].meta.get("val")
        return isinstance(value, torch.Tensor) and value.dtype == torch.int8

    why = "its int8 (quantized) value would cross the Core ML model's interface, which has no int8 features"
    reasons = {name: why for name in outputs if int8(name)}
    reasons |= {user.name: why for name in inputs if int8(name) for user in nodes[name].users}
    if reasons:
        raise edgeport.DeclineNodes(reasons)


def _tensor_types(ct: ModuleType, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> dict[str, Any]:
    """coremltools input/output types that keep names, shapes and float widths."""
    ins = [
        ct.TensorType(name=s.name, shape=s.shape, dtype=np.bool_ if s.dtype is torch.bool else _NUMPY[CARRIER[s.dtype]])
        for s in inputs
    ]
    # Float outputs keep their width (coremltools would make fp32 outputs fp16 under
    # fp16 precision); for the others coremltools picks the carrier itself.
    outs = [
        ct.TensorType(name=s.name, dtype=_NUMPY[CARRIER[s.dtype]] if s.dtype.is_floating_point else None)
        for s in outputs
    ]
    return {"inputs": ins, "outputs": outs}


def with_copy_twins(program: ExportedProgram, registry: ConverterRegistry) -> ExportedProgram:
    """``program`` with each op coremltools knows only as a ``_copy`` twin renamed to it.

    The program we were given is left alone: the renaming happens on a copy of the
    graph that shares the weights.
    """
    twins = {}
    for node in program.graph.nodes:
        twin = registry.copy_twin(node.target) if node.op == "call_function" else None
        if twin is not None:
            twins[node.name] = twin
    if not twins:
        return program
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(program.graph, {}))
    for node in graph.nodes:
        if node.name in twins:
            node.target = twins[node.name]
    module = torch.fx.GraphModule(program.graph_module, graph)
    return ExportedProgram(
        root=module,
        graph=graph,
        graph_signature=program.graph_signature,
        state_dict=program.state_dict,
        range_constraints=program.range_constraints,
        module_call_graph=program.module_call_graph,
        constants=program.constants,
        verifiers=program.verifiers,
    )


def _refused_node(error: Exception, transcript: toolchain.Transcript, program: ExportedProgram) -> str | None:
    """The node coremltools failed on, when the failure was about one node."""
    names = {node.name for node in program.graph.nodes if node.op == "call_function"}
    unsupported = _UNSUPPORTED.match(str(error))
    if unsupported and unsupported["node"] in names:
        return unsupported["node"]
    if transcript.node_failed and transcript.current_node in names:
        return transcript.current_node
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


@contextlib.contextmanager
def _collect_only_new_objects() -> Iterator[None]:
    """Let coremltools' closing `gc.collect()` look only at what the conversion allocated.

    `coremltools.convert` ends with a full collection; with torch loaded that costs
    about 0.4 s per call (measured), more than converting a small partition. Frozen
    objects are skipped by collections. A process that froze objects itself is left
    as it is, since unfreezing would undo its freeze.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _aten_dialect(program: ExportedProgram) -> ExportedProgram:
    """``program`` in the ATen dialect coremltools insists on. A quantized graph is
    captured again without a decomposition (it changes nothing there: flow.recapture),
    which leaves it in the TRAINING dialect; an empty decomposition table only re-traces."""
    if program.dialect != "TRAINING":
        return program
    with toolchain.quiet():
        return program.run_decompositions({})


def convert_partition(
    ct: ModuleType, registry: ConverterRegistry, program: ExportedProgram, options: CoreMLOptions
) -> tuple[Any, list[TensorSpec], list[TensorSpec]]:
    """Convert ``program`` to an ML program; returns the MLModel and the partition's I/O.

    Raises `edgeport.DeclineNodes` when coremltools refuses one node, and
    `edgeport.BackendError` for any other failure.
    """
    inputs, outputs = partition_io(program)
    arguments = {**convert_arguments(ct, options), **_tensor_types(ct, inputs, outputs)}
    source = with_copy_twins(_aten_dialect(program), registry)
    with toolchain.quiet() as transcript, _collect_only_new_objects():
        try:
            # skip_model_load: compiling the model for this machine is load()'s job, on macOS.
            return ct.convert(source, skip_model_load=True, **arguments), inputs, outputs
        except Exception as error:  # coremltools raises anything from ValueError to AssertionError
            failure = error
    node = _refused_node(failure, transcript, program)
    if node is not None:
        target = next(n.target for n in program.graph.nodes if n.name == node)
        reason = f"coremltools could not convert {target}: {_first_line(failure)}"
        raise edgeport.DeclineNodes({node: reason}) from failure
    raise edgeport.BackendError(
        f"coremltools could not convert the partition: {_first_line(failure)}",
        hint="set the 'edgeport.backends.coreml' logger to DEBUG to see coremltools' own messages",
    ) from failure
