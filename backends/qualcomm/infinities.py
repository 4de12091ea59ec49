"""Where an infinity or a NaN known at export flows, so QNN HTP is never handed one.

HTP computes float graphs in fp16 and saturates ±inf to ±65504 (the simulator's output
reads ±65536), so an infinite value comes back finite. Declining only the node that
makes the infinity (an ``-inf`` literal, or a constant export folded from
``scalar_tensor(-inf)``) is not enough: that node then runs portably and its infinity
enters the next partition as a run-time input, where HTP saturates it all the same
(the OpInfo sweep's special.entr: ``where(x > 0, -x * log(x), -inf)`` gave -65536).

`non_finite_flows` follows each known infinity forward through the graph once per program
(`QualcommBackend.prepare`). The flow stops at an op whose answer stays right with
±65504 in place of ±inf (`ABSORBS`: exp, softmax of a score masked with -inf, sigmoid,
tanh; an attention, of its mask) or whose output is bool (a comparison). `support` declines the nodes on a flow
that reaches a program output: there the saturated value would be the answer. A flow
that ends in an absorbing op is harmless and stays on HTP: an attention score plus a
-inf causal mask, then softmax (edgeport's LLM prefill), saturates to -65504 and
softmax still gives 0 there. An infinity that only arrives at run time (in the user's
data) is not known here and is saturated as before.

A NaN known at export (a parameter or constant holding one: a corrupted weight) has no
fp16 stand-in that any op makes right: HTP computes 131008 in its place (`relu` gives
65536, `softmax` a one-hot, a comparison true), so nothing absorbs it and every node it
reaches is declined. So is every node after an op that sums products over a known
infinity (a linear, a matmul, a conv: `INTRODUCES_NAN`), which makes NaN of ``inf * 0``
and ``inf - inf`` where torch does: a linear whose weight holds inf, even when a softmax
follows. An additive ``-inf`` mask only meets additions and the softmax that absorbs it,
and stays on HTP.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.fx import Node

from edgeport.fold import FOLDED_FROM

aten = torch.ops.aten

# Ops whose output is right (to fp16) with ±65504 in place of an infinite input.
ABSORBS = frozenset({aten.exp, aten._softmax, aten.sigmoid, aten.tanh})
# Ops that sum products of two operands (at these positions): an infinity in one makes
# NaN of inf * 0 and inf - inf. An added bias only carries its infinity on.
INTRODUCES_NAN = {aten.linear: (0, 1), aten.addmm: (1, 2), aten.mm: (0, 1), aten.bmm: (0, 1),
                  aten.baddbmm: (1, 2), aten.matmul: (0, 1), aten.convolution: (0, 1)}


def has_infinite_literal(node: Node) -> bool:
    """A float argument that is ±inf (``torch.where(c, x, float("-inf"))``)."""
    return any(isinstance(a, float) and math.isinf(a) for a in (*node.args, *node.kwargs.values()))


INFINITY = "an infinity known at export"
SATURATES_INF = "QNN HTP computes in fp16 and saturates inf to 65536, so an infinite result comes back finite"
HAS_NO_NAN = ("QNN HTP has no NaN: it computes 131008 in its place, so the answer would not be torch's (a weight "
              "holding NaN is a corrupted model)")


def non_finite_flows(program: torch.export.ExportedProgram,
                     constant: Callable[[Node], torch.Tensor | None]) -> dict[str, str]:
    """The nodes that pass a value known at export not to be finite on to a program
    output, each with why it is declined ("passes a NaN from l.weight on to the output;
    QNN HTP has no NaN ..."): of the nodes whose value may hold one (see the module's
    docstring), those from which such nodes lead to an output."""
    infinite, nan = _carrying(program, constant)
    carrying = {**infinite, **nan}
    escaping = {node.name for node in program.graph.output_node().all_input_nodes if node.name in carrying}
    for node in reversed(program.graph.nodes):  # readers come first
        if node.name in carrying and any(user.name in escaping for user in node.users):
            escaping.add(node.name)
    return {name: f"passes {carrying[name]} on to the output; {HAS_NO_NAN if name in nan else SATURATES_INF}"
            for name in escaping}


def _carrying(program: torch.export.ExportedProgram,
              constant: Callable[[Node], torch.Tensor | None]) -> tuple[dict[str, str], dict[str, str]]:
    """The nodes whose value may hold an infinity known at export, and those whose value
    may hold a NaN, each with what it holds ("an infinity known at export from mask",
    "a NaN from l.weight")."""
    origins = {spec.arg.name: spec.target for spec in program.graph_signature.input_specs if spec.target}
    origins |= {node.name: ", ".join(node.meta[FOLDED_FROM]) for node in program.graph.nodes
                if node.op == "placeholder" and node.meta.get(FOLDED_FROM)}  # a transposed weight: the weight
    infinite: dict[str, str] = {}  # node -> the constant its infinity comes from ("" for a literal)
    nan: dict[str, str] = {}  # node -> what it may pass on
    for node in program.graph.nodes:  # topological order: inputs come first
        if node.op == "placeholder":
            value = constant(node)
            if value is None or not value.is_floating_point():
                continue
            if bool(torch.isnan(value).any()):
                nan[node.name] = f"a NaN from {origins.get(node.name, node.name)}"
            elif bool(torch.isinf(value).any()):
                infinite[node.name] = origins.get(node.name, node.name)
        elif node.op == "call_function":
            from_nan = next((nan[arg.name] for arg in node.all_input_nodes if arg.name in nan), None)
            from_infinity = next((infinite[arg.name] for arg in _carried_inputs(node) if arg.name in infinite), None)
            multiplied = _multiplied_infinity(node, infinite)
            if from_nan is not None:  # no op makes a NaN right: each reads it as 131008
                nan[node.name] = from_nan
            elif multiplied is not None:
                source = f" in {multiplied}" if multiplied else ""
                nan[node.name] = f"a NaN that {node.name} makes of the infinity{source} (inf * 0, inf - inf)"
            elif not _absorbs(node) and (has_infinite_literal(node) or from_infinity is not None):
                infinite[node.name] = from_infinity or ""
    infinities = {name: f"{INFINITY} from {origin}" if origin else INFINITY for name, origin in infinite.items()}
    return infinities, nan


def _multiplied_infinity(node: Node, infinite: dict[str, str]) -> str | None:
    """Where the infinity comes from that `node` multiplies in a sum of products, if it does."""
    positions = INTRODUCES_NAN.get(getattr(node.target, "overloadpacket", None), ())
    operands = [node.args[i] for i in positions if i < len(node.args)]
    return next((infinite[arg.name] for arg in operands if isinstance(arg, Node) and arg.name in infinite), None)


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
