"""May the mediatek backend take a node? Our writer must write it, and LiteRT's MediaTek
plugin must hand everything written for it to NeuroPilot.

Checked in order, each "no" naming its rule: the writer's own answer; then, for a node
computed at run time (constants are folded at compile time and reach no one), the TFLite
ops the writer declares it writes for it (`tflite.written_ops`) against the plugin's
list, and the rank and dtype of its tensors (`neuropilot`). The writer's plumbing ops
(`tflite.PLUMBING`) are all legalized, so they need no question.

In a quantized graph the integer values are the outputs of quantize nodes and the
inputs of dequantize nodes: the writer accepts only those with fixed per-tensor
parameters (and dequantizes of constant weights, stored per channel), which NeuroPilot
maps to its quantized tensor types. Run-time (per-token) quantization and group-wise
4-bit weights are not NeuroPilot forms (neuropilot.py).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.fx import Node

import edgeport
from edgeport.backends import tflite

from . import neuropilot


RUN_TIME_QUANTIZED = edgeport.Support.no(
    "MediaTek NeuroPilot: activations quantized at run time (per token) and group-wise 4-bit weights have no "
    f"Neuron tensor type (fixed per-tensor or per-channel parameters only: {neuropilot.TYPES_SOURCE}); "
    "mediatek quantizes with int8"
)


def mediatek_support(node: Node, ctx: edgeport.SupportContext) -> edgeport.Support:
    """Support for one node: yes, or no with the rule that declines it."""
    if tflite.is_affine_quantization_op(node):
        return RUN_TIME_QUANTIZED
    answer = tflite.writer_support(node, ctx)
    if not answer or node.op != "call_function":
        return answer
    try:
        consts = tflite.constant_nodes(ctx.program)
        if node in consts:
            return answer
        reason = _ops_rule(node, ctx) or _tensor_rule(node, consts, tflite.is_quantization_op(node))
    except Exception as e:  # noqa: BLE001 - support must never raise
        reason = f"MediaTek NeuroPilot: {node.target}: could not check ({type(e).__name__}: {e})"
    return edgeport.Support.no(reason) if reason else answer


def _tensor_rule(node: Node, consts: frozenset[Node], quantizes: bool) -> str | None:
    """Rank of every tensor the node reads or writes; dtype of every runtime one.
    `quantizes`: the node is a quantize or dequantize the writer accepts (fixed per-tensor
    parameters), so its integer tensor is a quantized one."""
    for role, val, runtime in _tensors(node, consts):
        reason = neuropilot.rank_rule(tuple(val.shape), f"{role} of {_name(node)}")
        if reason is None and runtime:
            reason = neuropilot.dtype_rule(val.dtype, f"{role} of {_name(node)}", quantized=quantizes)
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


def _ops_rule(node: Node, ctx: edgeport.SupportContext) -> str | None:
    for op in sorted(tflite.written_ops(node, ctx)):
        reason = neuropilot.op_rule(op, f"{_name(node)} (written as {op})")
        if reason:
            return reason
    return None


def _name(node: Node) -> str:
    return str(node.target) if isinstance(node.target, torch._ops.OpOverload) else node.name
