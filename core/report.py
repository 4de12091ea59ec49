"""The placement report: where every node runs, and why not elsewhere.

Saved in the program's manifest, so `edgeport explain` needs nothing but the file.
JSON shape (one per method):

    nodes:      [{name, op, backend, partition, reasons: {backend: why not}, source,
                  quantized: {activations, weights} (a delegated op of a quantized graph),
                  float_between_quantized: true (one its backend computes in float although
                  quantize and dequantize nodes surround it),
                  integer: true (in a quantized graph, an op whose value is integers or
                  flags, a view of token ids: no scheme quantizes it)}]
    partitions: [{id, backend, nodes (count), node_names, inputs, outputs,
                  boundary_bytes, fallback}]
    values:     {name: {dtype, shape, bytes}} for every value crossing a partition boundary
    faults:     {backend: error} when a backend's support() or prepare() raised (only then)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.fx import Node

from edgeport.partitioners.policy import PORTABLE
from edgeport.partitioners.support import is_compute

from .manifest import QUANTIZATION_OPS, Step
from .outcomes import Compiled, FellBack, Outcome, Placement
from .quantize.node_dtypes import node_dtypes
from .quantize.placement import Ran
from .tensors import DTYPE_NAMES


def quantized_counts(report: Mapping[str, Any]) -> dict[str, Ran]:
    """backend -> what its artifacts run, read off a method's report, where a quantizer's
    annotations say what it meant (the cpu writes in float a relu it annotated that reads
    a float view). Quantize and dequantize nodes are not ops, nor are ops on integers: a
    view of token ids counted, unquantized and unnamed ("quantizes 71 of its 72 op(s)"
    of CLIP's text model on qualcomm, with no op said to stay float)."""
    ops: dict[str, list[tuple[str, str]]] = {}
    quantized: dict[str, list[str]] = {}
    in_float: dict[str, list[str]] = {}
    for n in report["nodes"]:
        if n["backend"] == PORTABLE or n["op"].startswith(QUANTIZATION_OPS) or n.get("integer"):
            continue
        ops.setdefault(n["backend"], []).append((n["name"], n["op"]))
        if "quantized" in n:
            quantized.setdefault(n["backend"], []).append(n["name"])
        if n.get("float_between_quantized"):
            in_float.setdefault(n["backend"], []).append(n["name"])
    return {backend: Ran(tuple(each), tuple(quantized.get(backend, ())), tuple(in_float.get(backend, ())))
            for backend, each in ops.items()}


def _compile_seconds(outcome: Outcome | None) -> float | None:
    """How long the backend's compile call for a partition took (a failed one too); None
    for a partition no backend compiled."""
    return round(outcome.seconds, 3) if isinstance(outcome, (Compiled, FellBack)) else None


def runs_fake_quantized(report: Mapping[str, Any]) -> bool:
    """Whether a portable step runs quantize/dequantize nodes (a quantized partition whose
    compile failed): torch computes it as the fake-quantized reference."""
    return any(n["backend"] == PORTABLE and n["op"].startswith(QUANTIZATION_OPS) for n in report["nodes"])


def op_name(node: Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) if not isinstance(target, torch._ops.OpOverload) else None
    return name or str(target)


def source_of(node: Node) -> str:
    """The user's line that produced the node: the innermost frame outside torch."""
    trace = node.meta.get("stack_trace") or ""
    frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
    own = [f for f in frames if "/torch/" not in f and "/site-packages/" not in f]
    return (own or frames or [""])[-1]


def _bytes(node: Node) -> int:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return 0
    numel = val.numel()
    # A symbolic size has no byte count, and int() on it would specialize the dynamic
    # dim for the rest of the export (a guard in torch's shape environment).
    return numel * val.element_size() if isinstance(numel, int) else 0


def _integer(node: Node) -> bool:
    """Whether `node`'s value is a tensor of integers or flags (nothing to quantize)."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and not val.is_floating_point()


def _value(node: Node) -> dict[str, Any]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return {"dtype": type(val).__name__, "shape": [], "bytes": 0}
    shape = [d if isinstance(d, int) else str(d) for d in val.shape]  # symbolic dims by name
    return {"dtype": DTYPE_NAMES.get(val.dtype, str(val.dtype)), "shape": shape, "bytes": _bytes(node)}


def placement_report(placement: Placement, subprograms: Mapping[int, Any], steps: Sequence[Step]) -> dict[str, Any]:
    """The report of one lowered method (the shape in the module docstring): each node's
    backend and every backend's reason not to take it, each partition's boundary."""
    nodes, matrix, plan = placement.nodes, placement.matrix, placement.plan
    fallbacks = placement.fallbacks()
    partition_of = {n.name: p for p in plan.partitions for n in p.nodes}
    by_name = {n.name: n for n in nodes}
    ran_on = {s.partition: (s.backend if s.kind == "delegate" else PORTABLE) for s in steps}
    ran_on.update({p.id: PORTABLE for p in plan.partitions if p.id not in ran_on})  # no step: nothing to run
    float_nodes = {p.id: outcome.artifact.float_nodes for p in plan.partitions
                   if isinstance(outcome := placement.outcome(p), Compiled)}
    quantized_graph = any(op_name(n).startswith(QUANTIZATION_OPS) for n in nodes if n.op == "call_function")
    node_rows = []
    for node in nodes:
        if not is_compute(node):
            continue
        partition = partition_of[node.name]
        reasons = matrix.reasons(node.name)
        for declined in (plan.demoted.get(node.name), fallbacks.get(partition.id)):
            if declined is not None:
                reasons[declined.backend] = declined.reason
        node_rows.append({
            "name": node.name,
            "op": op_name(node),
            "backend": ran_on[partition.id],
            "partition": partition.id,
            "reasons": reasons,
            "source": source_of(node),
        })
        quantized = node_dtypes(node) if ran_on[partition.id] != PORTABLE else {}  # portable computes in float
        if quantized and node.name in float_nodes.get(partition.id, ()):
            node_rows[-1]["float_between_quantized"] = True  # its backend has no quantized form of it
        elif quantized:  # a delegated op between dequantize and quantize nodes: its integer types
            node_rows[-1]["quantized"] = quantized
        elif quantized_graph and _integer(node):
            node_rows[-1]["integer"] = True
    partition_rows = []
    for partition in plan.partitions:
        sub = subprograms[partition.id]
        partition_rows.append({
            "id": partition.id,
            "backend": ran_on[partition.id],
            "nodes": sum(1 for n in partition.nodes if is_compute(n)),
            "node_names": [n.name for n in partition.nodes],
            "inputs": list(sub.inputs),
            "outputs": list(sub.outputs),
            "boundary_bytes": sum(_bytes(by_name[v]) for v in (*sub.inputs, *sub.outputs) if v in by_name),
            "fallback": f"{fallback.backend}: {fallback.reason}" if (fallback := fallbacks.get(partition.id)) else None,
            "compile_s": _compile_seconds(placement.outcome(partition)),
        })
    crossing = {v: None for p in partition_rows for v in (*p["inputs"], *p["outputs"]) if v in by_name}
    report = {"nodes": node_rows, "partitions": partition_rows, "values": {v: _value(by_name[v]) for v in crossing}}
    if matrix.faults:
        report["faults"] = dict(matrix.faults)
    return report
