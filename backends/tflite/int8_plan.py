"""Which ops of a quantized graph are written on int8 tensors, decided before writing.

An op is written in int8 (`Plan.int8`) when its lowering has an int8 form whose check
passes, and, read off the graph:

- every argument its `Int8Signature` names as an activation is a per-tensor int8
  dequantize of a runtime value (or, at a `stored` position, of a constant);
- its weight, if the signature has one, dequantizes an integer constant the writer
  stores as is (`qdq.weight_reason`);
- its value (after the batch norm and activation the float plan folded into it) is
  read only by per-tensor quantizes that agree on their parameters, and those keep
  the signature (the input's parameters for "shared", the kernel's for `fixed`).

Then the quantizes become aliases of the op's int8 output, and a dequantize that
nothing reads as float is never written. A linear whose input is quantized per token
at run time and whose weight is an integer constant is written as a FULLY_CONNECTED
with a float input (`Plan.hybrid`), which LiteRT's XNNPACK delegate runs as
qd8-f32-qc8w / qd8-f32-qb4w; the quantization chain before it is never written.

Anything else in a quantized graph is written in float, with a DEQUANTIZE or
QUANTIZE where the graph has one: the same numbers as the reference, only slower.
The cpu quantizer annotates only what passes these checks. It also leaves float the
int8 forms XNNPACK does not run (`Int8.xnnpack`), yet their neighbours' quantize and
dequantize still surround them, so the cpu writes with `xnnpack_only` and those stay
float here too (an int8 HARD_SWISH between convs was written, and split the delegate).

What this plan makes of MobileNetV2 is, op for op, what Google's ai-edge-quantizer 0.10
(`static_wi8_ai8`) makes of our fp32 artifact (bench/quantize_reference.py, 2026-11-26):
the same 71 operators in the same order with the same tensor types, per-channel weights,
fused RELU6, the NCHW input transposed as int8, a PAD before each stride-2 conv. Only the
boundary differs: ours takes and gives float (a QUANTIZE and a DEQUANTIZE, inside the
XNNPACK delegate), theirs int8. With those two cut off, LiteRT runs both at the same
1-thread CPU time (3.26 ms against 3.24 at the minimum). Measured and left as they are:
the PADs cost nothing, because XNNPACK folds a PAD into the next convolution whatever
the zero point (PAD + depthwise takes what the depthwise alone takes, 0.181 ms at
[1,112,112,96]); transposing the float input before quantizing it saves 30 µs on its own
at 1 thread but nothing visible in the whole network, and nothing at 2 threads.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.fx import Graph, Node

from edgeport.partitioners.support import is_compute

from . import qdq
from .emitter import Plan
from .lowering import Constants, Int8Signature, lookup
from .qdq import QParams

aten = torch.ops.aten

# Linears the writer can give a run-time-quantized input (a float FULLY_CONNECTED input).
HYBRID_LINEARS = frozenset({aten.linear.default})


@dataclass(frozen=True)
class Int8Form:
    """How one op is written on int8 tensors: each dequantize it reads as int8 with its
    parameters, the parameters of its output, and the dequantize of its weight."""

    inputs: tuple[tuple[Node, QParams], ...]
    output: QParams
    weight: Node | None = None

    def params(self, dequantize: Node) -> QParams:
        return dict(self.inputs)[dequantize]


def activation_args(node: Node, signature: Int8Signature) -> list[object]:
    """The arguments `signature` reads as int8 activations (a list argument flattened)."""
    return args_at(node, signature.activations)


def args_at(node: Node, positions: tuple[int, ...]) -> list[object]:
    """The node's arguments at `positions` (a list argument flattened)."""
    args: list[object] = []
    for position in positions:
        arg = node.args[position] if position < len(node.args) else None
        args.extend(arg if isinstance(arg, (list, tuple)) else [arg])
    return args


def plan_int8(graph: Graph, live: set[Node], consts: Constants, plan: Plan) -> None:
    """Fill `plan.int8`, `plan.hybrid` and `plan.unwritten`, and alias each quantize an
    int8 op feeds to that op."""
    readers = {n: [u for u in n.users if u in live] for n in live}
    outputs = set(graph.output_node().all_input_nodes)
    for node in graph.nodes:
        if node not in live or node in consts or node in plan.alias or node.op != "call_function":
            continue
        if node.target in HYBRID_LINEARS and hybrid_reason(node, consts) is None:
            plan.hybrid[node] = qdq.dynamic_source(node.args[0])
            continue
        form = _int8_form(node, consts, plan, readers, outputs)
        if isinstance(form, Int8Form):
            plan.int8[node] = form
            for quantize in _group_readers(node, plan, readers):
                plan.alias[quantize] = quantize.args[0]  # the group member it reads
    for node in graph.nodes:
        if node in live and node not in plan.alias and _requantizes_identically(node, consts):
            plan.alias[node] = node.args[0].args[0]
    plan.unwritten.update(_unwritten(graph, live, consts, plan, readers, outputs))


def float_ops(graph: Graph, live: set[Node], consts: Constants, plan: Plan) -> frozenset[str]:
    """The names of the ops written in float. In a quantized graph some sit between
    quantize and dequantize nodes yet are written in float (an AVERAGE_POOL_2D or a
    SOFTMAX XNNPACK runs in float only, an op whose parameters do not fit its int8
    kernel): the placement report must not show them as int8 (`Artifact.float_nodes`).
    A node aliased to another (a fused activation, a folded batch norm) is written as
    that one is. An int8 op that only relabels its input's layout (a permute, a
    transpose) writes no operator itself: its reader writes the TRANSPOSE, so when every
    reader takes its value as float after a DEQUANTIZE, that TRANSPOSE is float, and so
    is the op here (an int8 linear's q/k/v permutes before a float softmax)."""
    folded_into = {bn: conv for conv, bn in plan.bn_fold.items()}

    def written_in_int8(node: Node) -> bool:
        node = folded_into.get(node, node)
        while node in plan.alias:
            node = plan.alias[node]
        if node in plan.int8 and _relabels(node):
            return _read_as_int8(node, plan, written_in_int8)
        return node in plan.int8 or node in plan.hybrid

    return frozenset(n.name for n in graph.nodes
                     if n in live and is_compute(n) and n not in consts and not qdq.is_quantization_op(n)
                     and not written_in_int8(n))


def _relabels(node: Node) -> bool:
    """Whether the node's lowering writes no operator of its own (`writes` empty): its
    value is its input's tensor, relabelled (a permute's layout, a clone)."""
    entry = lookup(node.target)
    return entry is not None and entry.writes == frozenset()


def _read_as_int8(node: Node, plan: Plan, written_in_int8: Callable[[Node], bool]) -> bool:
    """Whether an op written in int8 reads the node's int8 value: through the quantize
    aliased to it and a dequantize, or as a quantize to the same parameters."""
    for quantize in (u for u in node.users if plan.alias.get(u) is node):
        for dequantize in quantize.users:
            if any(written_in_int8(u) or plan.alias.get(u) is quantize for u in dequantize.users):
                return True
    return False


def _requantizes_identically(node: Node, consts: Constants) -> bool:
    """A quantize of a dequantize with the same parameters: the int8 tensor itself.
    (PT2E observes a value shared through a view and the edge into the next op
    separately; both see the same numbers, so they agree.)"""
    params = qdq.quantizes_to(node)
    if params is None:
        return False
    source = node.args[0]
    return qdq.dequantizes_from(source) == params and source.args[0] not in consts


def hybrid_reason(node: Node, consts: Constants) -> str | None:
    """None when a linear is written as a FULLY_CONNECTED with a float input quantized
    per token at run time and integer weights, else why not."""
    if qdq.dynamic_source(node.args[0]) is None:
        return "its input is not quantized per token at run time"
    reason = qdq.weight_reason(node.args[1], consts.value)
    if reason:
        return reason
    bias = node.args[2] if len(node.args) > 2 else None
    if bias is not None and bias not in consts:
        return "a bias computed at run time"
    weight = consts.value(node.args[1].args[0])
    if weight.dim() != 2 or weight.shape[1] % 2:
        return f"weight of shape {tuple(weight.shape)} (2d with an even number of inputs)"
    return None


def _int8_form(node: Node, consts: Constants, plan: Plan, readers: dict, outputs: set) -> Int8Form | str:
    """The node's int8 form, or why it is written in float."""
    entry = lookup(node.target)
    if entry is None or entry.int8 is None:
        return "no int8 lowering"
    if plan.xnnpack_only and not entry.int8.xnnpack:
        return "XNNPACK runs it in float only (in int8 TFLite's own kernel would, outside the delegate)"
    signature = entry.int8.signature
    if entry.int8.check is not None and (reason := entry.int8.check(node, consts)):
        return reason
    inputs = []
    stored = args_at(node, signature.stored)
    for arg in activation_args(node, signature):
        params = qdq.dequantizes_from(arg)
        if params is None or (arg.args[0] in consts and arg not in stored):
            return "an activation is not an int8 tensor computed at run time"
        inputs.append((arg, params))
    weight = None
    if signature.weight is not None:
        weight = node.args[signature.weight]
        if (reason := qdq.weight_reason(weight, consts.value)) is not None:
            return reason
        if qdq.op_name(weight) == qdq.DEQUANTIZE_AFFINE:
            return "group-wise weights (written only for a linear with a float input)"
    quantizes = _group_readers(node, plan, readers)
    if not quantizes or group(node, plan) & outputs:
        return "its value is not quantized to int8 by every reader"
    params = {qdq.quantizes_to(q) for q in quantizes}
    if None in params or len(params) != 1:
        return "its readers quantize it to different or non-int8 parameters"
    output = params.pop()
    if signature.output == "shared" and any(p != output for _, p in inputs):
        return "input and output parameters differ where the kernel needs them equal"
    if signature.fixed is not None and not _close(output, signature.fixed):
        return f"output parameters {output} differ from the kernel's fixed {signature.fixed}"
    return Int8Form(tuple(inputs), output, weight)


def _close(params: QParams, fixed: tuple[float, int]) -> bool:
    return math.isclose(params.scale, fixed[0], rel_tol=1e-6) and params.zero_point == fixed[1]


def group(node: Node, plan: Plan) -> set[Node]:
    """The node and what the float plan writes as its value (a folded batch norm and its
    getitem, a fused activation), and the first output of a multi-output op
    (max_pool2d_with_indices): quantized as one, only the last value observed."""
    members = {node} | {n for n, target in plan.alias.items() if target is node}
    bn = plan.bn_fold.get(node)
    if bn is not None:
        members.add(bn)
    if isinstance(node.meta.get("val"), (tuple, list)):
        members |= {u for u in node.users if u.target is operator.getitem and u.args[1] == 0}
    return members


def group_tail(node: Node, plan: Plan) -> Node:
    """The member of the node's group that the rest of the graph reads (the node itself
    when that is not one member)."""
    members = group(node, plan)
    tails = [m for m in members if any(u not in members and (u.users or u.op == "output") for u in m.users)]
    return tails[0] if len(tails) == 1 else node


def _group_readers(node: Node, plan: Plan, readers: dict) -> list[Node]:
    members = group(node, plan)
    return [u for g in members for u in readers.get(g, []) if u not in members]


def _unwritten(graph: Graph, live: set[Node], consts: Constants, plan: Plan, readers: dict,
               outputs: set) -> Iterator[Node]:
    """Dequantizes read only as int8 (by int8 ops, or by quantizes to the same
    parameters), weights read only as integers, and the dynamic quantization chains
    read only by hybrid FULLY_CONNECTEDs."""
    weights = {form.weight for form in plan.int8.values() if form.weight is not None}
    weights |= {linear.args[1] for linear in plan.hybrid}
    for node in graph.nodes:
        if node not in live or node in outputs:
            continue
        users = readers[node]
        if qdq.dequantizes_from(node) is not None and all(
            u in plan.int8 or plan.alias.get(u) is node.args[0] for u in users
        ):
            yield node
        elif node in weights and all(u in plan.int8 or u in plan.hybrid for u in users):
            yield node
    for source in {plan.hybrid[linear] for linear in plan.hybrid}:
        chain = qdq.dynamic_chain(source)
        ends = [n for n in chain if qdq.dynamic_source(n) is source]
        if all(u in plan.hybrid for end in ends for u in readers.get(end, [])):
            yield from chain
