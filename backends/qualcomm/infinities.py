"""Where an infinity known at export flows, so QNN HTP is never handed one.

HTP computes float graphs in fp16 and saturates ±inf to ±65504 (the simulator's output
reads ±65536), so an infinite value comes back finite. Declining only the node that
makes the infinity (an ``-inf`` literal, or a constant export folded from
``scalar_tensor(-inf)``) is not enough: that node then runs portably and its infinity
enters the next partition as a run-time input, where HTP saturates it all the same
(the OpInfo sweep's special.entr: ``where(x > 0, -x * log(x), -inf)`` gave -65536).

`infinite_values` follows each known infinity forward through the graph once per program
(`QualcommBackend.prepare`). The flow stops at an op whose answer stays right with
±65504 in place of ±inf (`ABSORBS`: exp, softmax of a score masked with -inf, sigmoid,
tanh; an attention, of its mask) or whose output is bool (a comparison). `support` declines the nodes on a flow
that reaches a program output: there the saturated value would be the answer. A flow
that ends in an absorbing op is harmless and stays on HTP: an attention score plus a
-inf causal mask, then softmax (edgeport's LLM prefill), saturates to -65504 and
softmax still gives 0 there. An infinity that only arrives at run time (in the user's
data) is not known here and is saturated as before.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.fx import Node

aten = torch.ops.aten

# Ops whose output is right (to fp16) with ±65504 in place of an infinite input.
ABSORBS = frozenset({aten.exp, aten._softmax, aten.sigmoid, aten.tanh})


def has_infinite_literal(node: Node) -> bool:
    """A float argument that is ±inf (``torch.where(c, x, float("-inf"))``)."""
    return any(isinstance(a, float) and math.isinf(a) for a in (*node.args, *node.kwargs.values()))


def infinite_values(program: torch.export.ExportedProgram,
                    constant: Callable[[Node], torch.Tensor | None]) -> frozenset[str]:
    """Names of the nodes that pass an infinity known at export on to a program output:
    of the nodes whose value may hold one (a constant input holding one, a node with an
    infinite literal, and every node reading one of those unless it absorbs the
    infinity), those from which such nodes lead to an output."""
    carrying = _carrying(program, constant)
    escaping = {node.name for node in program.graph.output_node().all_input_nodes if node.name in carrying}
    for node in reversed(program.graph.nodes):  # readers come first
        if node.name in carrying and any(user.name in escaping for user in node.users):
            escaping.add(node.name)
    return frozenset(escaping)


def _carrying(program: torch.export.ExportedProgram, constant: Callable[[Node], torch.Tensor | None]) -> set[str]:
    carrying: set[str] = set()
    for node in program.graph.nodes:  # topological order: inputs come first
        if node.op == "placeholder":
            value = constant(node)
            if value is not None and value.is_floating_point() and bool(torch.isinf(value).any()):
                carrying.add(node.name)
        elif node.op == "call_function" and not _absorbs(node) and (
                has_infinite_literal(node) or any(arg.name in carrying for arg in _carried_inputs(node))):
            carrying.add(node.name)
    return carrying


def _carried_inputs(node: Node) -> list[Node]:
    """The inputs through which an infinity reaches `node`'s value: not an attention's
    mask, which is added to the scores its softmax absorbs (a stored -inf causal mask)."""
    if node.target == aten.scaled_dot_product_attention.default:
        return [arg for arg in node.args[:3] if isinstance(arg, Node)]  # query, key, value
    return node.all_input_nodes


def _absorbs(node: Node) -> bool:
    value = node.meta.get("val")
    is_bool = isinstance(value, torch.Tensor) and value.dtype == torch.bool
    return is_bool or getattr(node.target, "overloadpacket", None) in ABSORBS
