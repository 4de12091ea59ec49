"""A 16-bit elementwise op's operand broadcast over the batch, copied to the batch first.

HTP computes a quantized uint16 Add wrongly when one operand of a rank-3 output is
broadcast along the first dim and full in the other two (``x + pos``: x (2, 16, 32), pos
(16, 32) or (1, 16, 32): a BERT's or ViT's position embedding at batch 2) and a
LayerNorm reads the sum, directly or after other ops. Measured in QNN's HTP simulator
(onnxruntime-qnn 2.7.0, 2026-11-28), SQNR of HTP's output against the fake-quantized
reference, ``layer_norm(x + y)`` with x (2, 16, 32):

    y (16, 32) or (1, 16, 32)                          2 dB (x * y: -3 dB; a LayerNorm
                                                       after a Linear of the sum: 1 dB)
    y (2, 16, 32), (2, 1, 32), (16, 1) or (1, 1, 32)   80-85 dB
    x (2, 3, 16, 32), y (3, 16, 32)                    85 dB
    y (16, 32) copied to (2, 16, 32) first             79-93 dB (a Concat; a Tile, which
                                                       HTP runs in fp16: 74-75 dB)
    y (16, 32) at int8                                 42 dB (int8's steps)
    y (16, 32), the Add left in fp16                   70 dB
    y (16, 32), the sum read by a Linear, or output    79-87 dB

The zoo's BERT and GPT-2 with their padding masks (tests/zoo/models.py, batch 2) came
out at 8.6 and 9.7 dB against float in a16w8 (int8: 29.6 and 30.7 dB); now 41.7 and
49.2 dB. The QNN graph dumps of the wrong and the right case are the same ops with the
same types; only the operand's shape differs. So the quantizer copies such an operand
to the batch before an op a layer norm reads (`tile_batch_broadcast`, through its
``expand``): the copies share the operand's quantization parameters, and the op then
adds full tensors.
"""

from __future__ import annotations

import torch
from torch.fx import Node

aten = torch.ops.aten
ELEMENTWISE = frozenset({aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor})


def tile_batch_broadcast(node: Node) -> Node | None:
    """`node` again, each operand it broadcasts along dim 0 of its rank-3 output (and
    not along the other two) tiled to that batch, if a layer norm reads its value;
    None if not."""
    out = node.meta.get("val")
    if node.target not in ELEMENTWISE or not isinstance(out, torch.Tensor) or out.dim() != 3:
        return None
    batch = out.shape[0]
    if not isinstance(batch, int) or batch == 1:
        return None
    narrow = [arg for arg in node.args[:2] if _broadcast_over_batch(arg, out)]
    if not narrow or not _read_by_a_layer_norm(node):
        return None
    graph = node.graph
    with graph.inserting_before(node):
        tiled = {arg: _tiled(arg, batch) for arg in narrow}
        return graph.call_function(node.target, tuple(tiled.get(a, a) for a in node.args), dict(node.kwargs))


def _tiled(arg: Node, batch: int) -> Node:
    """`arg` (T, C) or (1, T, C) as `batch` copies, (batch, T, C), by a concatenation:
    HTP runs a uint16 Tile in fp16, whose 11 significant bits round the 16-bit values
    (74-75 dB against the reference; Concat, quantized: 85 dB)."""
    graph = arg.graph
    if arg.meta["val"].dim() == 2:
        arg = graph.call_function(aten.unsqueeze.default, (arg, 0))
    return graph.call_function(aten.cat.default, ([arg] * batch, 0))


def _read_by_a_layer_norm(node: Node) -> bool:
    """Whether a layer norm reads `node`'s value, directly or through other ops: only
    then was HTP's sum wrong (an LLM's scores plus its mask, with no LayerNorm after,
    were right, and stay as they are)."""
    seen, pending = {node}, list(node.users)
    while pending:
        user = pending.pop()
        if user.target == aten.native_layer_norm.default:
            return True
        pending.extend(u for u in user.users if u not in seen)
        seen.update(user.users)
    return False


def _broadcast_over_batch(arg: object, out: torch.Tensor) -> bool:
    """An operand of shape (T, C) or (1, T, C) for an output (B, T, C), T and C > 1."""
    val = arg.meta.get("val") if isinstance(arg, Node) else None
    if not isinstance(val, torch.Tensor) or val.dim() not in (2, 3) or not val.is_floating_point():
        return False
    shape = (1, *val.shape) if val.dim() == 2 else tuple(val.shape)
    return shape[0] == 1 and shape[1:] == tuple(out.shape[1:]) and all(d != 1 for d in shape[1:])
