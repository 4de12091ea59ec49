"""What one node of a quantized graph computes in, for `edgeport explain`.

After conversion a quantized op reads its activations through dequantize nodes and
its weight through a dequantize of an integer constant, and its value goes to a
quantize. Those nodes' literal arguments say the integer types; this module reads
them (by qualified op name: nothing here imports torchao) so the placement report can
show, per node, e.g. activations uint16 and weights int8 per channel. A node with no
quantized neighbour computes in float and gets nothing.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from ..support import DEQUANTIZE, DEQUANTIZE_AFFINE, DEQUANTIZE_CHANNEL, QUANTIZE, QUANTIZE_AFFINE, qualified_name

_INT4_MIN = -8  # group-wise 4-bit weights are stored in int8 with this quant_min


def _dtype(value: object) -> str:
    return str(value).removeprefix("torch.")


def is_quantization_node(node: Node) -> bool:
    return qualified_name(node).startswith(("quantized_decomposed::", "torchao::"))


def _of_constant(dequantize: Node) -> bool:
    """Whether a dequantize reads a stored integer tensor (a weight) rather than a
    quantize's value (an activation): in a method's graph every activation reaching a
    dequantize comes from a quantize node."""
    source = dequantize.args[0]
    return isinstance(source, Node) and source.op in ("placeholder", "get_attr")


def node_dtypes(node: Node) -> dict[str, str]:
    """{"activations": ..., "weights": ...} of a node a quantizer annotated; {} for a
    float node and for the quantize/dequantize nodes themselves."""
    if node.op != "call_function" or is_quantization_node(node):
        return {}
    activations, weights = set(), set()
    for arg in node.all_input_nodes:
        name = qualified_name(arg)
        if name == DEQUANTIZE and _of_constant(arg):  # a lookup's table, a norm's scale; int32: a bias
            if arg.args[5] != torch.int32:
                weights.add(f"{_dtype(arg.args[5])} per tensor")
        elif name == DEQUANTIZE:
            activations.add(_dtype(arg.args[5]))
        elif name == DEQUANTIZE_CHANNEL and arg.args[6] != torch.int32:  # int32: a bias
            weights.add(f"{_dtype(arg.args[6])} per channel")
        elif name == DEQUANTIZE_AFFINE:
            source = arg.args[0]
            if isinstance(source, Node) and qualified_name(source) == QUANTIZE_AFFINE:
                activations.add("int8 per token (run time)")
            else:
                block = arg.args[1][-1] if isinstance(arg.args[1], (list, tuple)) else arg.args[1]
                quant_min = arg.args[5] if len(arg.args) > 5 else arg.kwargs.get("quant_min")
                bits = "int4" if quant_min == _INT4_MIN else "int8"
                weights.add(f"{bits} per group of {block}")
    activations |= {_dtype(user.args[5]) for user in node.users if qualified_name(user) == QUANTIZE}
    found = {"activations": activations, "weights": weights}
    return {kind: ", ".join(sorted(values)) for kind, values in found.items() if values}
