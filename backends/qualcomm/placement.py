"""Placement is verified, never assumed: compile, then prove QNN took every node.

Two ways QNN says no:

- it refuses nodes while partitioning (ONNX Runtime would run them on its CPU EP):
  those nodes are declined back to the partitioner with QNN's reason;
- it claims the graph, then fails it as a whole (seen: a lone ``cumsum`` on HTP v68 dies
  at finalize with ``QNN_COMMON_ERROR_MEM_ALLOC``). Then we bisect the partition's aten
  nodes, compiling sub-graphs, to find the op(s) that fail alone, and decline only those.

Either way the result is `edgeport.DeclineNodes` keyed by aten node name, so the core
re-partitions and the rest stays on QNN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import edgeport

from .onnx_export import OnnxPartition, aten_node_names
from .provenance import fused
from .qnn_runtime import QnnCompileError, compile_context

# (aten node name, indices of its ONNX nodes in graph order)
Group = tuple[str, list[int]]


@dataclass(frozen=True)
class Verified:
    """A partition QNN took whole: its EPContext model, and the aten nodes it computes in
    float (asked for in a quantized partition: `Artifact.float_nodes`)."""

    context_model: bytes
    float_nodes: frozenset[str] = frozenset()


def compile_verified(partition: OnnxPartition, provider_options: dict[str, str], known: set[str],
                     quantized: bool = False) -> Verified:
    """The EPContext model of `partition` with every node on QNN, or DeclineNodes.

    `known` holds the partition's aten node names: a refusal is only sent back under a
    name the core can find. `quantized`: the partition has quantize/dequantize nodes, so
    name the nodes QNN nevertheless computes in float.
    """
    model = partition.model
    try:
        outcome = compile_context(model.SerializeToString(), provider_options, float_ops=quantized)
    except QnnCompileError as failure:
        raise edgeport.DeclineNodes(_narrow(model, provider_options, known, failure)) from failure
    if outcome.refused:
        raise edgeport.DeclineNodes(_by_aten_node(model, outcome.refused, known))
    if outcome.context_model is None:
        raise edgeport.BackendError("qualcomm: QNN compiled the partition but wrote no EPContext model")
    aten_of = {node.name: [aten, *fused(node)] for node, aten in zip(model.graph.node, aten_node_names(model))}
    float_nodes = {aten for name in outcome.float_ops for aten in aten_of.get(name, ()) if aten in known}
    return Verified(outcome.context_model, frozenset(float_nodes))


def _by_aten_node(model: Any, refused: dict[str, str], known: set[str]) -> dict[str, str]:
    """QNN's refusals (ONNX node -> reason) keyed by aten node name, "QNN: " prefixed."""
    aten_of = {node.name: aten for node, aten in zip(model.graph.node, aten_node_names(model))}
    reasons: dict[str, list[str]] = {}
    unmapped: list[str] = []
    for onnx_name, reason in sorted(refused.items()):
        aten = aten_of.get(onnx_name)
        if aten not in known:
            unmapped.append(f"{onnx_name}: {reason}")
        elif reason not in reasons.setdefault(aten, []):
            reasons[aten].append(reason)
    if unmapped:
        raise edgeport.BackendError(
            "qualcomm: QNN refused ONNX nodes that map to no aten node of the partition: " + "; ".join(unmapped),
            hint="decline the op producing them in the qualcomm support table",
        )
    return {aten: "QNN: " + " / ".join(texts) for aten, texts in reasons.items()}


def _narrow(model: Any, provider_options: dict[str, str], known: set[str], failure: QnnCompileError) -> dict[str, str]:
    """The aten nodes that make QNN fail the whole graph (found by bisection), plus any
    node a sub-graph compile showed QNN refusing; each with QNN's message."""
    groups = _groups(model)
    refused: dict[str, str] = {}

    def fails(subset: list[Group]) -> str | None:
        """QNN's error compiling just `subset`, or None if it compiles (refusals noted)."""
        indices = sorted(i for _, members in subset for i in members)
        try:
            outcome = compile_context(_submodel(model, indices).SerializeToString(), provider_options)
        except QnnCompileError as exc:
            return _describe(exc)
        refused.update(outcome.refused)
        return None

    message = _describe(failure)
    culprits = _bisect(groups, fails, message) if len(groups) > 1 else [(groups[0][0], message)]
    declined = {name: f"QNN: {text}" for name, text in culprits if name in known}
    declined.update(_by_aten_node(model, refused, known))
    if not declined:
        raise edgeport.BackendError(
            f"qualcomm: QNN failed the partition as a whole: {message}",
            hint="no single op reproduces it alone; compile smaller partitions or report the graph",
        )
    return declined


def _bisect(groups: list[Group], fails: Callable[[list[Group]], str | None], message: str) -> list[tuple[str, str]]:
    """The groups that fail alone, given that `groups` together fail with `message`."""
    if len(groups) == 1:
        return [(groups[0][0], message)]
    middle = len(groups) // 2
    found: list[tuple[str, str]] = []
    for half in (groups[:middle], groups[middle:]):
        half_message = fails(half)
        if half_message is not None:
            found += _bisect(half, fails, half_message)
    return found


def _groups(model: Any) -> list[Group]:
    """ONNX node indices grouped by their aten node, in graph order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, (node, aten) in enumerate(zip(model.graph.node, aten_node_names(model))):
        groups.setdefault(aten or f"<onnx:{node.name}>", []).append(index)
    return list(groups.items())


def _submodel(model: Any, indices: list[int]) -> Any:
    """A standalone ONNX model of the nodes at `indices`: what they read from outside
    becomes an input, what the rest of the graph (or the caller) reads becomes an output."""
    from onnx import helper

    graph = model.graph
    nodes = [graph.node[i] for i in indices]
    inside = set(indices)
    produced = {name for node in nodes for name in node.output if name}
    consumed = [name for node in nodes for name in node.input if name]
    initializers = {init.name: init for init in graph.initializer}
    read_outside = {name for i, node in enumerate(graph.node) if i not in inside for name in node.input}
    read_outside |= {value.name for value in graph.output}
    types = _value_types(model)
    inputs = [name for name in dict.fromkeys(consumed) if name not in produced and name not in initializers]
    outputs = [name for node in nodes for name in node.output if name in read_outside]
    sub = helper.make_graph(
        nodes,
        f"{graph.name}_part",
        [types[name] for name in inputs],
        [types[name] for name in outputs],
        initializer=[initializers[name] for name in dict.fromkeys(consumed) if name in initializers],
        value_info=[types[name] for name in produced if name in types and name not in outputs],
    )
    return helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)


def _value_types(model: Any) -> dict[str, Any]:
    """name -> ValueInfoProto for every tensor, inferring shapes the exporter left out."""
    import onnx

    graph = model.graph
    known = {v.name: v for v in (*graph.input, *graph.output, *graph.value_info)}
    needed = {name for node in graph.node for name in (*node.input, *node.output) if name}
    if needed - known.keys() - {init.name for init in graph.initializer}:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        known = {v.name: v for v in (*inferred.input, *inferred.output, *inferred.value_info)}
    return known


def _describe(failure: QnnCompileError) -> str:
    """QNN's message, with its own most specific error line when it logged one."""
    message = str(failure)
    details = [line for line in failure.qnn_errors if line not in message]
    return f"{message} ({details[-1]})" if details else message
