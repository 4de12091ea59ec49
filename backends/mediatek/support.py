"""May the mediatek backend take a node? Our writer must write it, and LiteRT's MediaTek
plugin must hand everything written for it to NeuroPilot.

Checked in order, each "no" naming its rule: the writer's own answer; then, for a node
computed at run time (constants are folded at compile time and reach no one), the TFLite
ops written for it (`writes.written_ops`) against the plugin's list, and the rank and
dtype of its tensors (`neuropilot`).
"""

from __future__ import annotations

import operator
import weakref
from typing import Callable, Iterator

import torch
from torch.fx import Graph, Node

import edgeport
from edgeport.backends import tflite

from . import neuropilot
from .writes import written_ops

# Ops computed from their first argument's shape alone: constant even on a runtime
# tensor (the writer folds them the same way).
_FROM_SHAPE_ALONE = frozenset(
    {torch.ops.aten.full_like.default, torch.ops.aten.zeros_like.default, torch.ops.aten.ones_like.default}
)

_CONSTANTS: weakref.WeakKeyDictionary[Graph, frozenset[Node]] = weakref.WeakKeyDictionary()


def constant_nodes(ctx: edgeport.SupportContext) -> frozenset[Node]:
    """Nodes whose value is known at compile time: weights, and what is computed from them."""
    graph = ctx.program.graph_module.graph
    cached = _CONSTANTS.get(graph)
    if cached is not None:
        return cached
    consts: set[Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if ctx.constant(node) is not None:
                consts.add(node)
        elif node.op == "call_function" and _folds(node, consts):
            consts.add(node)
    _CONSTANTS[graph] = frozenset(consts)
    return _CONSTANTS[graph]


def _folds(node: Node, consts: set[Node]) -> bool:
    if node.target is operator.getitem:
        return node.args[0] in consts
    if not isinstance(node.target, torch._ops.OpOverload) or torch.Tag.nondeterministic_seeded in node.target.tags:
        return False
    inputs = node.all_input_nodes[1:] if node.target in _FROM_SHAPE_ALONE else node.all_input_nodes
    return all(n in consts for n in inputs)


def mediatek_support(node: Node, ctx: edgeport.SupportContext) -> edgeport.Support:
    """Support for one node: yes, or no with the rule that declines it."""
    answer = tflite.writer_support(node, ctx)
    if not answer or node.op != "call_function":
        return answer
    try:
        consts = constant_nodes(ctx)
        if node in consts:
            return answer
        reason = _ops_rule(node, consts.__contains__) or _tensor_rule(node, consts)
    except Exception as e:  # noqa: BLE001 - support must never raise
        reason = f"MediaTek NeuroPilot: {node.target}: could not check ({type(e).__name__}: {e})"
    return edgeport.Support.no(reason) if reason else answer


def _tensor_rule(node: Node, consts: frozenset[Node]) -> str | None:
    """Rank of every tensor the node reads or writes; dtype of every runtime one."""
    for role, val, runtime in _tensors(node, consts):
        reason = neuropilot.rank_rule(tuple(val.shape), f"{role} of {_name(node)}")
        if reason is None and runtime:
            reason = neuropilot.dtype_rule(val.dtype, f"{role} of {_name(node)}")
        if reason:
            return reason
    return None


def _tensors(node: Node, consts: frozenset[Node]) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(role, value, computed at run time) for each tensor the node reads and writes."""
    for arg in node.all_input_nodes:
        val = arg.meta.get("val")
        if isinstance(val, torch.Tensor):
            yield "input", val, arg not in consts
    out = node.meta.get("val")
    if isinstance(out, torch.Tensor):  # a multi-output node's outputs are checked at its getitems
        yield "output", out, True


def _ops_rule(node: Node, is_const: Callable[[Node], bool]) -> str | None:
    ops = written_ops(node, is_const)
    if ops is None:
        return (f"MediaTek NeuroPilot: {_name(node)} is not in the mediatek backend's table of what the "
                "TFLite writer writes (backends/mediatek/writes.py)")
    for op in ops:
        reason = neuropilot.op_rule(op, f"{_name(node)} (written as {op})")
        if reason:
            return reason
    return None


def _name(node: Node) -> str:
    return str(node.target) if isinstance(node.target, torch._ops.OpOverload) else node.name
