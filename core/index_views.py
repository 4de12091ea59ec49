"""An index that reads every element in order, or one run of positions, written as the
view (and expand) or the slice it is.

Transformers (5.x, ``masking_utils``) reads a padding mask (B, S) as
``padding_mask[batch_idx, kv_idx]`` with ``batch_idx = arange(B)[:, None, None, None]``
and ``kv_idx = arange(S)[None, None, None, :]`` (`_non_vmap_expansion_sdpa`): an
``aten.index`` whose constant indices only spread the mask's dims over a (B, 1, 1, S)
output. Every BERT, GPT-2 or Llama called with an attention mask has one. As a gather it
cost each backend something: QNN HTP's GatherND is wrong for rank-3 data, so qualcomm
declined it and BERT's encoder ran in two partitions with the index portable between
them; NeuroPilot legalizes no GATHER_ND; the TFLite writer proved the same identity
inside its own lowering. `view_spread_indexes` rewrites such an index, once, for every
backend, as

    view(x, spread) -> expand(out's shape)       (no expand when spread is out's shape)

Falcon splits its fused query/key/value projection as ``fused_qkv[..., [-2]]``: an
``aten.index`` of one constant position (``[None, None, tensor([-2])]``), which every
backend declined (the TFLite writer takes no None in an index, qualcomm no index at
all), leaving four portable steps per model. `slice_run_indexes` writes an index whose
one index tensor is a 1-d run of consecutive positions as

    slice(x, dim, start, end) -> clone        (an index's value is a new contiguous tensor)

Proved, not guessed: the indices (their values known at export, computed by
`fold.constant_values`) are applied to the positions ``arange(x.numel())`` of x's
indexed dims and the result is compared with the positions viewed and expanded. Only
static shapes and integer indices are rewritten (a bool index selects a run-time
count), and no value the method returns is replaced (the graph signature names it).
"""

from __future__ import annotations

import math

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from .fold import constant_values

aten = torch.ops.aten


def view_spread_indexes(program: ExportedProgram) -> int:
    """Rewrite (in place) each ``aten.index`` that only spreads its input's dims over the
    output as a view and an expand; the index tensors' computation, unread, goes too.
    Returns how many were rewritten."""
    graph = program.graph_module.graph
    returned = set(graph.output_node().all_input_nodes)
    candidates = [n for n in graph.nodes if n.target == aten.index.Tensor and n not in returned and _static(n)]
    tables = constant_values(program, [i for n in candidates for i in n.args[1] if isinstance(i, Node)])
    rewritten = 0
    for node in candidates:
        spread = _spread_shape(node, tables)
        if spread is None:
            continue
        out_shape = list(node.meta["val"].shape)
        with graph.inserting_before(node):
            result = graph.call_function(aten.view.default, (node.args[0], list(spread)))
            result.meta = {**node.meta, "val": node.args[0].meta["val"].view(spread)}
            if list(spread) != out_shape:
                result = graph.call_function(aten.expand.default, (result, out_shape))
                result.meta = dict(node.meta)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        rewritten += 1
    return _recompiled(program, rewritten)


def slice_run_indexes(program: ExportedProgram) -> int:
    """Rewrite (in place) each ``aten.index`` whose one index tensor is a 1-d constant run
    of consecutive positions as a slice and a clone. Returns how many were rewritten."""
    graph = program.graph_module.graph
    returned = set(graph.output_node().all_input_nodes)
    candidates = {n: _lone_index(n) for n in graph.nodes
                  if n.target == aten.index.Tensor and n not in returned and _static(n)}
    candidates = {n: found for n, found in candidates.items() if found is not None}
    tables = constant_values(program, [index for _, index in candidates.values()])
    rewritten = 0
    for node, (dim, index) in candidates.items():
        x = node.args[0]
        run = _run(tables.get(index), x.meta["val"].shape[dim])
        if run is None:
            continue
        with graph.inserting_before(node):
            part = graph.call_function(aten.slice.Tensor, (x, dim, *run))
            part.meta = {**node.meta, "val": aten.slice.Tensor(x.meta["val"], dim, *run)}
            result = graph.call_function(aten.clone.default, (part,), {"memory_format": torch.contiguous_format})
            result.meta = dict(node.meta)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        rewritten += 1
    return _recompiled(program, rewritten)


def _recompiled(program: ExportedProgram, rewritten: int) -> int:
    """``rewritten``, once the graph of a rewrite that changed something has lost its dead
    code and its module has been recompiled."""
    if rewritten:
        program.graph_module.graph.eliminate_dead_code()
        program.graph_module.recompile()
    return rewritten


def _lone_index(node: Node) -> tuple[int, Node] | None:
    """The dim and the index tensor of ``x[:, ..., i]``, an index with one 1-d tensor."""
    placed = [(dim, i) for dim, i in enumerate(node.args[1]) if i is not None]
    if len(placed) != 1 or not isinstance(placed[0][1], Node):
        return None
    value = placed[0][1].meta.get("val")
    return placed[0] if isinstance(value, torch.Tensor) and value.dim() == 1 else None


def _run(positions: torch.Tensor | None, size: int) -> tuple[int, int] | None:
    """(start, end) when `positions` are start, start + 1, ..., end - 1 along a dim of
    `size` (negative ones counted from the end), else None."""
    if positions is None or positions.dtype not in (torch.int64, torch.int32) or positions.numel() == 0:
        return None
    positions = torch.where(positions < 0, positions + size, positions)
    start = int(positions[0])
    if start < 0 or start + positions.numel() > size:
        return None  # out of range: left to the backend (or torch) to report
    if not torch.equal(positions, torch.arange(start, start + positions.numel(), dtype=positions.dtype)):
        return None
    return start, start + positions.numel()


def _static(node: Node) -> bool:
    x = node.args[0]
    return all(isinstance(v, torch.Tensor) and all(isinstance(d, int) for d in v.shape)
               for v in (node.meta.get("val"), x.meta.get("val") if isinstance(x, Node) else None))


def _spread_shape(node: Node, tables: dict[Node, torch.Tensor]) -> tuple[int, ...] | None:
    """The shape x views as when ``x[indices]`` equals that view expanded to the output,
    or None (a real gather, indices not known at export, or x not contiguous)."""
    x, indices = node.args[0].meta["val"], node.args[1]
    if not x.is_contiguous() or not all(isinstance(i, Node) and i in tables for i in indices):
        return None
    values = [tables[i] for i in indices]
    if any(v.dtype not in (torch.int64, torch.int32) for v in values):
        return None
    broadcast = torch.broadcast_tensors(*values)
    spread = tuple(size if any((b != b.narrow(d, 0, 1)).any() for b in broadcast) else 1
                   for d, size in enumerate(broadcast[0].shape))
    indexed = tuple(x.shape[: len(values)])
    if math.prod(spread) != math.prod(indexed):
        return None
    positions = torch.arange(math.prod(indexed)).reshape(indexed)
    try:
        gathered = positions[tuple(broadcast)]
    except IndexError:  # out of range: left to the backend (or torch) to report
        return None
    if not torch.equal(gathered, positions.reshape(spread).expand(gathered.shape)):
        return None
    return spread + tuple(x.shape[len(values):])
