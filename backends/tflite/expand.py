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

A mask known at export (a causal one, transformers' decoders: Falcon's) is added to
the scaled scores as a stored float value, -inf where it masks, before the softmax. The
add and the softmax then stay float (`infinite_values.py`: the -inf cannot be quantized
with the scores), between the int8 products; the softmax's output is quantized again.
A boolean mask that masks some query row whole stays whole instead (torch answers zeros
for that row, -inf everywhere would make it NaN), and so does a mask computed at run
time (it would be quantized with the scores, and the SELECT that applies a boolean one
is not legalized by LiteRT's MediaTek plugin: mediatek/neuropilot.py `NEURON_ONLY`), or
dropout: `whole_attention_reason` says why, and the quantizer's summary names it.
Multi-query attention (one key/value head) is written as the float attention writes it
(ops/attention.py): the query heads merged into the rows of each product.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from edgeport.fold import module_value
from edgeport.quantize.expand import stored_tensor

from .ops.attention import sdpa_args, shared_heads

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


def whole_attention_reason(node: Node) -> str | None:
    """Why `attention_as_products` leaves a ``scaled_dot_product_attention`` whole (and
    float, between quantized neighbours), or None when it expands it."""
    a = sdpa_args(node)
    if a.get("dropout_p"):
        return "attention with dropout has no int8 form here"
    if a.get("enable_gqa"):
        return "attention with enable_gqa has no int8 form here"
    q, k, v = (tuple(a[name].meta["val"].shape[:-2]) for name in ("query", "key", "value"))
    if k != v or shared_heads(q, k) is None:
        return f"attention whose key/value batch dims {k} / {v} do not broadcast to the query's {q} as trailing 1s"
    mask = a.get("attn_mask")
    if mask is None:
        return None
    value = module_value(mask)
    if value is None:
        return ("attention with a mask computed at run time stays whole: its -inf would be quantized with the "
                "scores, and the SELECT applying a bool one is not legalized by every compiler (NeuroPilot's)")
    if value.dtype == torch.bool and not bool(value.any(-1).all()):
        return "attention whose mask masks a query row whole stays whole (torch answers zeros there)"
    return None


def attention_as_products(node: Node) -> Node | None:
    """A ``scaled_dot_product_attention`` unmasked or masked by a value known at export,
    inserted before `node` as its products, scale, mask and softmax (module docstring);
    None for any other node."""
    if node.target != SDPA or whole_attention_reason(node) is not None:
        return None
    a = sdpa_args(node)
    q, k, v = a["query"], a["key"], a["value"]
    heads, length = tuple(q.meta["val"].shape[:-2]), q.meta["val"].shape[-2]
    batch, source = tuple(k.meta["val"].shape[:-2]), k.meta["val"].shape[-2]
    scale = a.get("scale") or 1.0 / math.sqrt(q.meta["val"].shape[-1])
    mask = _additive_mask(a, length, source)
    graph = node.graph
    rows = math.prod(heads) * length // math.prod(batch)  # a query row per head sharing the keys

    def merged(x: Node, width: int) -> Node:  # a product of merged rows viewed back per head
        return x if heads == batch else graph.call_function(aten.view.default, (x, [*heads, length, width]))

    def as_rows(x: Node, width: int) -> Node:  # (B, H, T, w) -> (B, 1, H*T, w), from x in torch's order
        if heads == batch:
            return x
        dense = graph.call_function(aten.clone.default, (x,), {"memory_format": torch.contiguous_format})
        return graph.call_function(aten.view.default, (dense, [*batch, rows, width]))

    with graph.inserting_before(node):
        keys = graph.call_function(aten.transpose.int, (k, -2, -1))
        scores = merged(graph.call_function(aten.matmul.default, (as_rows(q, q.meta["val"].shape[-1]), keys)), source)
        scale_node = stored_tensor(torch.tensor(float(scale)), q, "attention_scale")
        scaled = graph.call_function(aten.mul.Tensor, (scores, scale_node))
        if mask is not None:
            scaled = graph.call_function(aten.add.Tensor, (scaled, stored_tensor(mask, q, "attention_mask")))
        probs = graph.call_function(aten._softmax.default, (scaled, -1, False))
        return merged(graph.call_function(aten.matmul.default, (as_rows(probs, source), v)), v.meta["val"].shape[-1])


def _additive_mask(a: dict, length: int, source: int) -> torch.Tensor | None:
    """The mask known at export as a float to add to the scores (-inf where it masks),
    or None when nothing is masked."""
    mask = a.get("attn_mask")
    if a.get("is_causal"):
        keep = torch.ones(length, source, dtype=torch.bool).tril()
    elif mask is None or _masks_nothing(mask):
        return None
    else:
        keep = module_value(mask)
        if keep.dtype != torch.bool:
            return keep.float()
    return torch.zeros(keep.shape).masked_fill(~keep, -math.inf)


def _masks_nothing(mask: Node | None) -> bool:
    """No mask, or one known at export that keeps every key: transformers 5 passes
    encoders (ViT, BERT without a padding mask) an all-True bool mask."""
    if mask is None:
        return True
    value = module_value(mask)
    if value is None:
        return False
    return bool(value.all()) if value.dtype == torch.bool else not bool(value.any())
