"""Concatenated operands that hold nothing, dropped before partitioning.

Partial rotary embeddings split each head as ``x[..., :rot]`` (rotated) and
``x[..., rot:]`` (passed through), then ``cat`` the two back. With the whole head
rotated (Phi-3's `partial_rotary_factor` is 1.0) the passed-through part is a zero-size
slice. No backend holds a zero-size tensor (XNNPACK cannot prepare a model with one,
QNN's HTP simulator dies of a floating point exception on one), so each slice and its
``cat`` were portable: a Phi-3 ran as one delegate per layer with torch between them.
`drop_empty_cat_operands` removes every operand of ``aten.cat`` with no elements (the
concatenation is the same without it) and writes a ``cat`` left with one operand as that
operand; the zero-size slice, unread, goes too.

Only static shapes are rewritten, and a ``cat`` the method returns keeps its node (the
graph signature names it), with its one operand.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram
from torch.fx import Node

aten = torch.ops.aten


def drop_empty_cat_operands(program: ExportedProgram) -> int:
    """Drop (in place) the zero-size operands of each ``aten.cat`` that has others.
    Returns how many cats were rewritten."""
    graph = program.graph_module.graph
    returned = set(graph.output_node().all_input_nodes)
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.cat.default:
            continue
        operands = list(node.args[0])
        kept = [x for x in operands if not _empty(x)]
        if len(kept) == len(operands) or not kept or not _same_dtype(kept, node):
            continue
        if len(kept) == 1 and node not in returned and _same_value(kept[0], node):
            node.replace_all_uses_with(kept[0])
            graph.erase_node(node)
        else:
            node.args = (kept, *node.args[1:])
        rewritten += 1
    if rewritten:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return rewritten


def _empty(x: object) -> bool:
    """A tensor of static shape holding no elements."""
    value = x.meta.get("val") if isinstance(x, Node) else None
    return (isinstance(value, torch.Tensor) and all(isinstance(s, int) for s in value.shape)
            and value.numel() == 0)


def _same_dtype(operands: list[Node], cat: Node) -> bool:
    """The kept operands are of the cat's dtype: an empty operand of a wider dtype still
    promotes the result (cat of float32 and an empty float64 is float64)."""
    dtype = cat.meta["val"].dtype
    return all(isinstance(x, Node) and x.meta.get("val") is not None and x.meta["val"].dtype == dtype
               for x in operands)


def _same_value(operand: Node, cat: Node) -> bool:
    """The cat's value is the operand itself: same shape, dtype and layout (torch's cat
    also skips a 1-d empty operand of any other shape, and promotes dtypes; and it
    returns a new, contiguous tensor, where the operand may be a transposed one: Phi-3's
    rotated keys, which a view of the cat's value then could not view, and its int8
    calibration failed)."""
    a, b = operand.meta.get("val"), cat.meta.get("val")
    return (isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
            and a.stride() == b.stride())
