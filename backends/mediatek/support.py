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

from torch.fx import Node

import edgeport
from edgeport import support
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
    return _NEUROPILOT_RULES(node, ctx)


def _neuropilot_rules(node: Node, ctx: edgeport.SupportContext) -> edgeport.Support:
    """NeuroPilot's rules for a node the writer computes at run time (constants are folded):
    the ops written for it, then the rank of every tensor (constants too), then the dtype
    of each tensor computed at run time."""
    consts = tflite.WriterContext.of(ctx).constant_nodes
    if node in consts:
        return edgeport.Support.yes()
    answer = _ops_rule(node, ctx)
    if not answer:
        return answer
    tensors = support.node_tensors(node)
    reason = support.first_reason(node, tensors, _rank_rule) or support.first_reason(
        node, support.without_constants(tensors, consts.__contains__), _dtype_rule)
    return edgeport.Support.no(reason) if reason else edgeport.Support.yes()


_NEUROPILOT_RULES = support.never_raising(_neuropilot_rules, "MediaTek NeuroPilot: {op}: could not check ({error})")


def _rank_rule(node: Node, tensor: support.TensorUse) -> str | None:
    return neuropilot.rank_rule(tuple(tensor.value.shape), f"{tensor.role} of {support.op_label(node)}")


def _dtype_rule(node: Node, tensor: support.TensorUse) -> str | None:
    # A quantize or dequantize the writer accepts (fixed per-tensor parameters): its integer tensor is a quantized one.
    return neuropilot.dtype_rule(tensor.value.dtype, f"{tensor.role} of {support.op_label(node)}",
                                 quantized=tflite.is_quantization_op(node))


def _ops_rule(node: Node, ctx: edgeport.SupportContext) -> edgeport.Support:
    for op in sorted(tflite.written_ops(node, ctx)):
        reason = neuropilot.op_rule(op, f"{support.op_label(node)} (written as {op})")
        if reason:
            return edgeport.Support.no(reason)
    return edgeport.Support.yes()
