"""Which values of a graph to quantize hold an infinity or a sentinel known at export.

A causal attention mask written as transformers and most decoders write it, ``where(keep,
0, -inf)`` or ``torch.finfo(dtype).min`` in place of -inf, is computed from literals: a
stored value. Added to the scores, it makes them -inf where masked. Quantized, either
value spans every real score in one step (`edgeport.quantize.calibration` refuses such a
range), so the add and whatever reads its sum before a softmax cannot be int8. They need
not be: the softmax turns the masked scores into exact zeros, and its output is finite.

`holding_infinities` follows each such stored value (and each infinite literal) forward,
as far as it can reach: a node reading one holds one too, unless it absorbs it (softmax,
exp, sigmoid, tanh: a finite answer; a comparison: a bool). The quantizer keeps float each
op reading a value that holds one; the int8 graph resumes after the softmax. (qualcomm's
`infinities.py` follows infinities for another reason: HTP's fp16 saturates them.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.fx import GraphModule, Node

from edgeport.quantize.calibration import SENTINEL

aten = torch.ops.aten

# Ops whose output is finite when an input holds -inf (or a sentinel as large).
ABSORBS = frozenset({aten._softmax, aten.softmax, aten.exp, aten.sigmoid, aten.tanh})


def holding_infinities(model: GraphModule, consts: set[Node],
                       value_of: Callable[[Node], torch.Tensor | None]) -> frozenset[Node]:
    """The nodes whose value may hold ±inf or a sentinel (beyond ±`SENTINEL`) at run time
    because of a value known at export: a stored float value that holds one (``consts``,
    computed with ``value_of``: only those some run-time node reads), a node with an
    infinite or sentinel literal, and each node reading either, unless it absorbs it."""
    holding: set[Node] = set()
    for node in model.graph.nodes:  # topological order: inputs come first
        if node.op != "call_function" or node in consts or _absorbs(node):
            continue
        stored = [a for a in node.all_input_nodes if a in consts and _holds_one(a, value_of)]
        holding.update(stored)
        if stored or _sentinel_literal(node) or any(a in holding for a in node.all_input_nodes):
            holding.add(node)
    return frozenset(holding)


def _holds_one(node: Node, value_of: Callable[[Node], torch.Tensor | None]) -> bool:
    val = node.meta.get("val")
    if not (isinstance(val, torch.Tensor) and val.is_floating_point()):
        return False
    value = value_of(node)
    if value is None or not value.numel():
        return False
    return bool(value.amin() <= -SENTINEL) or bool(value.amax() >= SENTINEL)  # inf included; NaN is no mask


def _sentinel_literal(node: Node) -> bool:
    """A float argument that is ±inf or a sentinel (``masked_fill(m, float("-inf"))``)."""
    return any(isinstance(a, float) and not math.isnan(a) and abs(a) >= SENTINEL
               for a in (*node.args, *node.kwargs.values()))


def _absorbs(node: Node) -> bool:
    value = node.meta.get("val")
    is_bool = isinstance(value, torch.Tensor) and value.dtype == torch.bool
    return is_bool or getattr(node.target, "overloadpacket", None) in ABSORBS
