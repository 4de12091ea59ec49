"""Ops the TFLite quantizer rewrites, before annotating, into the pieces the writer has
int8 forms for (core/quantize/expand.py asks `TfliteQuantizer.expand` about each node).

`product_as_linear`: GPT-2's Conv1D products and Falcon's ``x @ W.T``, for every scheme.

`attention_as_products`: ``scaled_dot_product_attention`` kept whole at capture
(`KEEP_OPS`) is written in float as two BATCH_MATMULs around a SOFTMAX
(ops/attention.py). In a quantized graph that whole op sat between the dequantizes of
q, k, v and the quantize of its output: for mediatek, NeuroPilot received it in float
inside an int8 graph. Expanded into

    scores = q @ k^T        BATCH_MATMUL, int8 operands and output
    scaled = scores * scale MUL by an int8 constant (one value: exact)
    probs = softmax(scaled) SOFTMAX, int8 at TFLite's fixed 1/256
    out = probs @ v         BATCH_MATMUL

each piece is annotated as its int8 form says, and the fake-quantized reference rounds
where the kernels do. Only for a backend that writes the int8 forms XNNPACK leaves to
TFLite's own kernels (`xnnpack_only=False`: mediatek): LiteRT 2.3's XNNPACK delegate runs
neither an int8 BATCH_MATMUL of two runtime tensors nor an int8 SOFTMAX
(tests/backends/cpu/test_cpu_quantized.py), so the cpu keeps attention whole and float.

An attention with a mask, causal or dropout stays whole: a mask's -inf (or
transformers' finfo.min) cannot be quantized with the scores, and the selects that
would apply it instead are not among the ops LiteRT's MediaTek plugin legalizes
(mediatek/neuropilot.py `NEURON_ONLY`).
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from edgeport.fold import module_value
from edgeport.quantize.expand import stored_tensor

from .ops.attention import sdpa_args

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


def product_as_linear(node: Node) -> Node | None:
    """``addmm(bias, x, w)`` or ``mm(x, w)`` with a stored (in, out) weight, inserted
    before `node` as ``linear(x, w^T, bias)``; None for any other node.

    GPT-2's Conv1D layers are such addmms, and Falcon's linears (``x @ W.T``) mms of a
    stored (out, in) weight transposed, whose linear reads W itself. Only a linear has
    int8 and per-token forms here (ops/int8.py, int8_plan.py), so every GPT-2 and Falcon
    linear stayed float under int8, int8-dynamic and int4-weight alike. The transpose of
    a stored (in, out) weight is computed once at export (core/fold.py: it replaces the
    weight)."""
    if node.target not in (aten.addmm.default, aten.mm.default):
        return None
    bias, x, weight = node.args if node.target == aten.addmm.default else (None, *node.args)
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        return None
    stored = _transposed_stored(weight)
    if stored is None and not _stored_matrix(weight):
        return None
    outputs = tuple(node.meta["val"].shape[-1:])
    if bias is not None and not (isinstance(bias, Node) and tuple(bias.meta["val"].shape) == outputs):
        return None  # a linear's bias is one value per output
    graph = node.graph
    with graph.inserting_before(node):
        transposed = stored if stored is not None else graph.call_function(aten.permute.default, (weight, [1, 0]))
        return graph.call_function(aten.linear.default, (x, transposed, *([bias] if bias is not None else [])))


def _stored_matrix(node: object) -> bool:
    return isinstance(node, Node) and node.op == "get_attr" and node.meta["val"].dim() == 2


def _transposed_stored(node: object) -> Node | None:
    """W when ``node`` is a stored matrix W transposed (``permute(W, [1, 0])``, ``t(W)``)."""
    if not isinstance(node, Node) or not node.args or not _stored_matrix(node.args[0]):
        return None
    if node.target == aten.t.default or (node.target == aten.permute.default and list(node.args[1]) == [1, 0]):
        return node.args[0]
    return None


def attention_as_products(node: Node) -> Node | None:
    """An unmasked ``scaled_dot_product_attention`` inserted before `node` as its
    products, scale and softmax (module docstring); None for any other node."""
    if node.target != SDPA:
        return None
    a = sdpa_args(node)
    if not _masks_nothing(a.get("attn_mask")) or a.get("is_causal") or a.get("dropout_p") or a.get("enable_gqa"):
        return None
    q, k, v = a["query"], a["key"], a["value"]
    if not q.meta["val"].shape[:-2] == k.meta["val"].shape[:-2] == v.meta["val"].shape[:-2]:
        return None
    scale = a.get("scale") or 1.0 / math.sqrt(q.meta["val"].shape[-1])
    graph = node.graph
    with graph.inserting_before(node):
        keys = graph.call_function(aten.transpose.int, (k, -2, -1))
        scores = graph.call_function(aten.matmul.default, (q, keys))
        scale_node = stored_tensor(torch.tensor(float(scale)), q, "attention_scale")
        scaled = graph.call_function(aten.mul.Tensor, (scores, scale_node))
        probs = graph.call_function(aten._softmax.default, (scaled, -1, False))
        return graph.call_function(aten.matmul.default, (probs, v))


def _masks_nothing(mask: Node | None) -> bool:
    """No mask, or one known at export that keeps every key: transformers 5 passes
    encoders (ViT, BERT without a padding mask) an all-True bool mask."""
    if mask is None:
        return True
    value = module_value(mask)
    if value is None:
        return False
    return bool(value.all()) if value.dtype == torch.bool else not bool(value.any())
