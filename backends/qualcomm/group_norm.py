"""Group norms as a layer norm over each group, which HTP runs quantized.

torch.onnx writes ``native_group_norm`` as Reshape, InstanceNormalization (of ones and
zeros), Reshape, Mul and Add. In a quantized partition none of them has a quantize of
its own, so HTP ran the whole chain in fp16 between the dequantize of x and the
quantize of the result (wav2vec2's feature encoder, whose first convolution is followed
by a GroupNorm of one group per channel: the zoo's one op left in float at a16w8).

A group norm normalizes each group of C/G channels over those channels and every
position, with the biased variance: a layer norm over the last dim of x viewed as
(N, G, C/G x positions). So the quantizer writes it (`expand`) as

    y = layer_norm(view(x, (N, G, L)), (L,), ones(L), eps)
    out = view(y, x.shape) * view(w, (C, 1, ...)) + view(b, (C, 1, ...))

which HTP runs as Reshapes sharing their input's parameters, its quantized LayerNorm
(the scale of ones uint8 per tensor, as for any layer norm) and a Mul and an Add whose
constant operands are quantized per tensor.

Measured in QNN's HTP simulator (2026-11-28), SQNR against float, before (the chain in
fp16) and now (every op quantized):

    zoo wav2vec2 (tests/zoo/models.py)      a16w8: 33.8 -> 33.8 dB   int8: 27.2 -> 27.6 dB
    conv, 16 groups of 1, rank 3 (tests)    a16w8: 49.8 -> 50.0 dB
    conv, 4 groups of 4, 10x10 (tests)      a16w8: 48.5 -> 48.4 dB   int8: 37.4 -> 35.3 dB

At int8 the normalized value's own uint8 rounding costs the small block 2 dB, in the
fake-quantized reference as on HTP (HTP against the reference: 39.8 dB, 42.6 with the
chain in fp16).
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

from edgeport.quantize.expand import stored_tensor

aten = torch.ops.aten


def group_norm_as_layer_norm(node: Node) -> Node | None:
    """Insert before `node` (the normalized output of a ``native_group_norm`` whose mean
    and rstd nothing reads) the layer norm and affine computing it; return the last, or
    None to leave it."""
    norm = node.args[0] if node.target is operator.getitem and node.args[1] == 0 else None
    if not isinstance(norm, Node) or norm.target != aten.native_group_norm.default:
        return None
    if any(user is not node for user in norm.users):
        return None
    x, weight, bias, batch, channels, positions, groups, eps = norm.args
    shape = list(x.meta["val"].shape)
    if not all(isinstance(d, int) for d in (*shape, batch, channels, positions, groups)):
        return None  # a dynamic size: the views would need it at run time
    width = channels // groups * positions
    per_channel = [channels] + [1] * (len(shape) - 2)
    graph = node.graph
    with graph.inserting_before(node):
        grouped = graph.call_function(aten.view.default, (x, [batch, groups, width]))
        scale = stored_tensor(torch.ones(width), x, "group_norm_scale")
        normed = graph.call_function(aten.native_layer_norm.default, (grouped, [width], scale, None, eps))
        out = graph.call_function(aten.view.default, (graph.call_function(operator.getitem, (normed, 0)), shape))
        if weight is not None:
            out = graph.call_function(aten.mul.Tensor, (out, graph.call_function(aten.view.default,
                                                                                 (weight, per_channel))))
        if bias is not None:
            out = graph.call_function(aten.add.Tensor, (out, graph.call_function(aten.view.default,
                                                                                 (bias, per_channel))))
    return out
