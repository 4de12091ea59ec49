"""Attention in a quantized partition as the MatMul, Softmax and MatMul HTP quantizes.

The backend keeps ``scaled_dot_product_attention`` whole at capture (support.py
`KEEP_OPS`): torch.onnx writes it as MatMul and Softmax without the ops torch's own
decomposition adds to guard fully masked rows. In a quantized partition that whole op
sat between the dequantizes of q, k, v and the quantize of its output, so HTP ran its
insides in fp16 (onnxruntime-qnn 2.7.0's QNN graph dump: every MatMul, Mul and Softmax of
it float). The quantizer expands it first (core/quantize/expand.py) into

    probs = softmax(q @ k^T * scale, -1);  out = probs @ v

each piece quantized as FORMS says, so HTP computes them in integers and the
fake-quantized reference rounds at the same places.

Only attention with no mask, no dropout and no grouped heads is expanded. A causal or
boolean mask needs the guard, and a finite additive mask's range (0 down to its
"masked" value) would set the steps of the masked scores: with uint8 activations a
mask of -100 leaves steps of ~0.4 for the scores that matter. Those stay whole, and
float on HTP, as the quantization report says.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.fx import Node

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


def expand_attention(node: Node) -> Node | None:
    """Insert before `node` (an unmasked ``scaled_dot_product_attention``) the pieces
    computing its value; return the last, or None to leave it whole."""
    args = _arguments(node)
    if args is None:
        return None
    query, key, value = args["query"], args["key"], args["value"]
    head_dim = query.meta["val"].shape[-1]
    scale = args.get("scale") or 1.0 / math.sqrt(head_dim)
    rank = query.meta["val"].dim()
    graph = node.graph
    with graph.inserting_before(node):
        swap_last = [*range(rank - 2), rank - 1, rank - 2]
        keys_t = graph.call_function(aten.permute.default, (key, swap_last))
        scores = graph.call_function(aten.matmul.default, (query, keys_t))
        scaled = graph.call_function(aten.mul.Tensor, (scores, float(scale)))
        probs = graph.call_function(aten._softmax.default, (scaled, -1, False))
        return graph.call_function(aten.matmul.default, (probs, value))


def _arguments(node: Node) -> dict[str, Any] | None:
    """The attention's arguments by name, if it is one this module expands."""
    if node.target != SDPA:
        return None
    names = [a.name for a in SDPA._schema.arguments]
    args = {**dict(zip(names, node.args)), **node.kwargs}
    plain = (args.get("attn_mask") is None and not args.get("dropout_p") and not args.get("is_causal")
             and not args.get("enable_gqa"))
    tensors = [args["query"], args["key"], args["value"]]
    if not plain or not all(isinstance(t, Node) and isinstance(t.meta.get("val"), torch.Tensor) for t in tensors):
        return None
    return args
