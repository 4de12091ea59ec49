"""Quantize and dequantize nodes of a quantized graph: QUANTIZE, DEQUANTIZE, or nothing.

Registered by qualified name (see `lowering.lookup`), so a float graph never imports
the quantized op libraries. Most of these nodes are never written: a quantize that
an int8 op feeds is that op's int8 output, and a dequantize read only in int8 is the
int8 tensor itself (int8_plan.py). What is written is a partition's boundary: a
float input is QUANTIZEd, a value leaving the partition (or read by a float op) is
DEQUANTIZEd. Dequantizes of constant weights fold like any constant.

A per-token quantization at run time (choose_qparams_affine ... dequantize_affine)
is written only inside a FULLY_CONNECTED with integer weights, which quantizes its
float input itself; anywhere else it is declined.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

from edgeport import BackendError

from .. import int8_plan, qdq
from ..emitter import Emitter, Value
from ..lowering import ANY, FLOAT, IsConst, lowering

INT8 = frozenset({torch.int8})


def _check_quantize(node: Node, is_const: IsConst) -> str | None:
    if node.target._overloadname != "default":
        return "quantization parameters computed at run time"
    if qdq.static_qparams(node) is None:
        _, _, _, qmin, qmax, dtype = node.args[:6]
        return f"quantizes to {dtype} [{qmin}, {qmax}] (int8 [-128, 127] is written)"
    return None


@lowering(qdq.QUANTIZE, writes=frozenset({"QUANTIZE"}), dtypes=FLOAT | INT8, check=_check_quantize)
def quantize(em: Emitter, node: Node) -> Value:
    """A float value entering int8 (a partition input, or the output of a float op)."""
    v = em.value(node.args[0])
    out = em.new(v.shape, torch.int8, node.name, v.perm, qdq.quantizes_to(node))
    em.op("QUANTIZE", [v.tensor], [out])
    return out


@lowering(qdq.DEQUANTIZE, writes=frozenset({"DEQUANTIZE"}), dtypes=FLOAT | INT8, check=_check_quantize)
def dequantize(em: Emitter, node: Node) -> Value:
    """An int8 value read as float: by a float op, or as a partition output."""
    v = em.value(node.args[0])
    expected = qdq.dequantizes_from(node)
    if v.quant != expected:
        raise BackendError(f"{node.name}: dequantizes with {expected} an int8 tensor quantized with {v.quant}")
    out = em.new(v.shape, torch.float32, node.name, v.perm)
    em.op("DEQUANTIZE", [v.tensor], [out])
    return out


def _check_weight_only(node: Node, is_const: IsConst) -> str | None:
    return "dequantizes a tensor computed at run time (only constant weights are dequantized at compile time)"


@lowering(qdq.DEQUANTIZE_CHANNEL, writes=frozenset(), dtypes=ANY, check=_check_weight_only)
def dequantize_channel(em: Emitter, node: Node) -> Value:
    raise BackendError(f"{node.name}: per-channel dequantize of a runtime tensor")  # declined by its check


# -- per-token quantization at run time ----------------------------------------------------------


def _dynamic_reason(node: Node, is_const: IsConst) -> str | None:
    """Why a node of a run-time quantization chain cannot be written: every chain from
    its source must end in linears written as FULLY_CONNECTED with a float input."""
    source = _chain_source(node)
    if source is None:
        return "quantizes at run time in a form other than per-token int8 into a linear"
    for end in (n for n in qdq.dynamic_chain(source) if qdq.dynamic_source(n) is source):
        for user in end.users:
            if user.target not in int8_plan.HYBRID_LINEARS or user.args[0] is not end:
                return f"a run-time quantized activation is read by {user.name}, not as a linear's input"
            reason = int8_plan.hybrid_reason(user, is_const)
            if reason:
                return f"{user.name} cannot take a run-time quantized input: {reason}"
    return None


def _chain_source(node: Node) -> Node | None:
    """The float tensor a node of a per-token chain quantizes, if the chain is one."""
    name = qdq.op_name(node)
    if name == qdq.DEQUANTIZE_AFFINE:
        return qdq.dynamic_source(node)
    if name == qdq.QUANTIZE_AFFINE:
        return _end_source([node])
    if name == qdq.CHOOSE_AFFINE:
        picks = [u for u in node.users if u.target is operator.getitem]
        return _end_source([q for p in picks for q in p.users if qdq.op_name(q) == qdq.QUANTIZE_AFFINE])
    return None


def _end_source(quantizes: list[Node]) -> Node | None:
    """The one float source the dequantizes after `quantizes` all stand for, if any."""
    sources = {qdq.dynamic_source(d) for q in quantizes for d in q.users}
    return sources.pop() if len(sources) == 1 else None


def _never_written(em: Emitter, node: Node) -> Value:
    raise BackendError(
        f"{node.name}: a run-time quantization outside a FULLY_CONNECTED",
        hint="report this graph: support accepted a chain the writer did not plan",
    )


# The chain reads float and makes int8 values and float scales.
for _name in (qdq.CHOOSE_AFFINE, qdq.QUANTIZE_AFFINE, qdq.DEQUANTIZE_AFFINE):
    lowering(_name, writes=frozenset(), dtypes=ANY | INT8, check=_dynamic_reason)(_never_written)
