"""Permutes and expands of rank 5 and up written at the lowest rank that moves the same data.

Swin's window partition reshapes a (B, H, W, C) map to (B, H/w, w, W/w, w, C), swaps
the two middle dims and reshapes back: rank-6 tensors, though B and H/w, and w and C,
move together. NPUs cap ranks (QNN HTP at 5 dims, NeuroPilot at NNAPI's 4), so each
such node was portable and split the model in partitions. `collapse_permutes` writes
every permute of rank > 4 whose dims move in fewer runs as

    view(x, runs' sizes) -> permute(runs) -> clone -> view(x's permuted shape)

(runs of consecutive dims that stay consecutive and in order merge into one dim, size-1
dims join any run), then drops the high-rank steps around it: a view of a view of a
contiguous value is one view, and a clone of a value that is already contiguous is that
value. Swin's window partition is then view, rank-4 permute, clone, view: the same
values for every backend, and nothing above rank 4.

Grouped-query attention repeats each key/value head (transformers' `repeat_kv`):
(B, kv, T, hs) -> unsqueeze -> (B, kv, 1, T, hs) -> expand (B, kv, n, T, hs) -> reshape
(B, kv * n, T, hs), a rank-5 expand in every Llama, Mistral, Qwen or Gemma whose key/value
heads are fewer than its query heads. `collapse_expands` writes each expand of rank > 4
whose dims fall in fewer runs (consecutive dims all kept, or all broadcast) as

    view(x, runs' sizes) -> expand(runs) -> clone -> view(the expand's shape)

and the same merge drops the rank-5 unsqueeze and views around it: (B, kv, 1, T * hs)
expanded to (B, kv, n, T * hs), rank 4, the same values. Where the heads are a transposed
view (Phi-3 slices values out of its fused projection), they are copied to torch's order
first, at rank 4: the copy the reshape after the expand made anyway, on fewer elements.

GPT-J rotates every two dims of a head (transformers' `rotate_every_two`): ``stack((-x[...,
1::2], x[..., ::2]), -1).flatten(-2)``, a rank-5 stack (captured as unsqueezes and a cat)
between rank-4 values, in every layer. `collapse_cats` writes each cat of rank > 4 whose
value only views read as

    view(x_i, (before, x_i's size along dim, after)) -> cat(dim 1) -> view(the cat's shape)

(the dims before and after the cat's dim merged: a concatenation moves them together),
and the same merge drops the rank-5 unsqueezes and the flatten around it: rank 3, the
same values. An operand that is no view of its data in torch's order (a strided slice,
``x[..., ::2]``) is copied first, at its own rank, as torch's cat copied it anyway.

Only static shapes are rewritten, and no value the method returns is replaced (the
graph signature names it).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.export import ExportedProgram
from torch.fx import Graph, Node
from torch.fx.node import map_arg

aten = torch.ops.aten

# The highest rank every backend's compiler takes (NeuroPilot: NNAPI's 4).
MAX_KEPT_RANK = 4
_VIEWS = frozenset({aten.view.default, aten._unsafe_view.default})
# Ops whose value is a view with x's data order when x is contiguous: a view of one is a view of x.
_UNIT_DIM_VIEWS = frozenset({aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims})
_ORDER_KEEPING_VIEWS = _VIEWS | _UNIT_DIM_VIEWS
_CONTIGUOUS_FORMATS = (None, torch.contiguous_format, torch.preserve_format)  # a clone's that keep a contiguous value so


def collapse_permutes(program: ExportedProgram) -> int:
    """Rewrite (in place) each permute of rank > `MAX_KEPT_RANK` whose dims move in
    fewer runs, then merge the views and clones around it. Returns how many permutes
    were rewritten."""
    return _collapse_each(program, aten.permute.default, _collapse)


def collapse_expands(program: ExportedProgram) -> int:
    """Rewrite (in place) each expand of rank > `MAX_KEPT_RANK` whose dims fall in fewer
    runs (`expand_runs`), then merge the views and clones around it. Returns how many
    expands were rewritten."""
    return _collapse_each(program, aten.expand.default, _collapse_expand)


def collapse_cats(program: ExportedProgram) -> int:
    """Rewrite (in place) each cat of rank > `MAX_KEPT_RANK` that only views read at
    rank 3 (module docstring), then merge the views around it. Returns how many cats
    were rewritten."""
    return _collapse_each(program, aten.cat.default, _collapse_cat)


def _collapse_each(program: ExportedProgram, target: Any, collapse: Callable[[Graph, Node], bool]) -> int:
    """``collapse(graph, node)`` on each call of ``target``; then, if any was rewritten,
    the views and clones around them merged. Returns how many were rewritten."""
    graph = program.graph_module.graph
    rewritten = sum(collapse(graph, node) for node in list(graph.nodes)
                    if node.op == "call_function" and node.target == target)
    if rewritten:
        _simplify(graph)
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return rewritten


def expand_runs(source: tuple[int, ...], shape: tuple[int, ...]) -> list[list[int]]:
    """The dims of ``x.expand(shape)`` (x of shape `source`, left-padded with 1s) grouped
    in runs of consecutive dims that are all kept or all broadcast; a size-1 dim of the
    output joins the run before it (or the first)."""
    source = (1,) * (len(shape) - len(source)) + tuple(source)
    groups: list[list[int]] = []
    kinds: list[bool] = []  # per run: broadcast (True) or kept
    leading: list[int] = []  # size-1 dims before any run: they join the first
    for d, size in enumerate(shape):
        broadcast = source[d] != size
        if size != 1 and (not kinds or kinds[-1] != broadcast):
            groups.append([d])
            kinds.append(broadcast)
        elif groups:
            groups[-1].append(d)
        else:
            leading.append(d)
    if not groups:
        return [leading]
    groups[0] = leading + groups[0]
    return groups


def _collapse_expand(graph: Graph, expand: Node) -> bool:
    x = expand.args[0]
    source, shape = tuple(x.meta["val"].shape), tuple(expand.meta["val"].shape)
    if len(shape) <= MAX_KEPT_RANK or not all(isinstance(s, int) for s in (*source, *shape)) or _returned(expand):
        return False
    if not all(user.target in _VIEWS or user.target == aten.clone.default for user in expand.users):
        return False  # an op reading the broadcast value itself would still see rank 5, after a copy
    groups = expand_runs(source, shape)
    if len(groups) > MAX_KEPT_RANK:
        return False
    data = x
    while not _contiguous(data) and data.op == "call_function" and data.target in _UNIT_DIM_VIEWS:
        data = data.args[0]  # a transposed value's unsqueeze: its elements in the same order
    if not _contiguous(data) and len(data.meta["val"].shape) > MAX_KEPT_RANK:
        return False
    padded = (1,) * (len(shape) - len(source)) + source
    with graph.inserting_before(expand):
        if not _contiguous(data):  # the copy repeat_kv's reshape made anyway, before the expand and smaller
            data = _add(graph, expand, aten.clone.default, (data,), {"memory_format": torch.contiguous_format})
        flat = _add(graph, expand, aten.view.default, (data, [math.prod(padded[d] for d in g) for g in groups]))
        wide = _add(graph, expand, aten.expand.default, (flat, [math.prod(shape[d] for d in g) for g in groups]))
        dense = _add(graph, expand, aten.clone.default, (wide,), {"memory_format": torch.contiguous_format})
        out = _add(graph, expand, aten.view.default, (dense, list(shape)))
    expand.replace_all_uses_with(out)
    graph.erase_node(expand)
    return True


def _collapse_cat(graph: Graph, cat: Node) -> bool:
    parts, dim = cat.args[0], int(cat.args[1]) if len(cat.args) > 1 else 0
    shape = tuple(cat.meta["val"].shape)
    if len(shape) <= MAX_KEPT_RANK or not all(isinstance(s, int) for s in shape) or _returned(cat):
        return False
    if not all(user.target in _VIEWS for user in cat.users):
        return False  # an op reading the concatenation itself would still see its rank
    dim %= len(shape)
    others = _without(shape, dim)
    if not all(isinstance(p, Node) and _without(tuple(p.meta["val"].shape), dim) == others for p in parts):
        return False  # a zero-size operand of another rank (core/empty_operands.py drops those)
    before, after = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    with graph.inserting_before(cat):
        flats = [_add(graph, cat, aten.view.default, (_in_order(graph, cat, p), [before, p.meta["val"].shape[dim],
                                                                                 after])) for p in parts]
        joined = _add(graph, cat, aten.cat.default, (flats, 1))
        out = _add(graph, cat, aten.view.default, (joined, list(shape)))
    cat.replace_all_uses_with(out)
    graph.erase_node(cat)
    return True


def _without(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    return shape[:dim] + shape[dim + 1:]


def _in_order(graph: Graph, like: Node, x: Node) -> Node:
    """`x`'s data in torch's order, as a view can read it: `x` when contiguous, else the
    value its unit-dim views (an unsqueeze) were taken of, copied if need be (a strided
    slice): at the lower rank, before the unsqueeze."""
    data = x
    while not _contiguous(data) and data.op == "call_function" and data.target in _UNIT_DIM_VIEWS:
        data = data.args[0]
    if _contiguous(data):
        return data
    return _add(graph, like, aten.clone.default, (data,), {"memory_format": torch.contiguous_format})


def runs(shape: tuple[int, ...], dims: list[int]) -> list[list[int]]:
    """The input dims of ``permute(x of shape, dims)`` of size > 1, grouped in runs that
    stay consecutive and in order in the output, in output order (size-1 dims are left
    out: they move no data)."""
    kept = [d for d in range(len(shape)) if shape[d] != 1]
    groups: list[list[int]] = []
    for d in (d for d in dims if shape[d] != 1):
        if groups and kept.index(d) == kept.index(groups[-1][-1]) + 1:
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups


def _collapse(graph: Graph, permute: Node) -> bool:
    x, dims = permute.args[0], [int(d) for d in permute.args[1]]
    shape = tuple(x.meta["val"].shape)
    if len(shape) <= MAX_KEPT_RANK or not all(isinstance(s, int) for s in shape) or _returned(permute):
        return False
    if not _contiguous(x):  # a view of it would not run as torch
        return False
    groups = runs(shape, [d % len(shape) for d in dims])
    if not groups or len(groups) > MAX_KEPT_RANK:
        return False
    by_input = sorted(range(len(groups)), key=lambda i: groups[i][0])
    sizes = [math.prod(shape[d] for d in groups[i]) for i in by_input]
    order = [by_input.index(i) for i in range(len(groups))]  # each output run's place among the input's
    with graph.inserting_before(permute):
        flat = _add(graph, permute, aten.view.default, (x, sizes))
        moved = _add(graph, permute, aten.permute.default, (flat, order))
        dense = _add(graph, permute, aten.clone.default, (moved,), {"memory_format": torch.contiguous_format})
        out = _add(graph, permute, aten.view.default, (dense, list(permute.meta["val"].shape)))
    permute.replace_all_uses_with(out)
    graph.erase_node(permute)
    return True


def _simplify(graph: Graph) -> None:
    """Merge view-of-view chains over contiguous values and drop clones of contiguous
    values, so the high-rank views the rewrite bypassed go unread."""
    for node in list(graph.nodes):
        if node.op != "call_function" or _returned(node):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, Node) or not _contiguous(source):
            continue
        if node.target == aten.clone.default and node.kwargs.get("memory_format") in _CONTIGUOUS_FORMATS:
            node.replace_all_uses_with(source)
        elif node.target in _VIEWS and source.op == "call_function" and source.target in _ORDER_KEEPING_VIEWS:
            inner = source.args[0]
            if isinstance(inner, Node) and _contiguous(inner):
                node.args = (inner, *node.args[1:])


def _contiguous(node: Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_contiguous()


def _returned(node: Node) -> bool:
    return any(user.op == "output" for user in node.users)


def _add(graph: Graph, like: Node, target, args: tuple, kwargs: dict | None = None) -> Node:  # noqa: ANN001
    """A new node computing ``target(*args)``, its meta (fake value) computed from its
    inputs', the rest of its meta (source trace, module stack) copied from `like`."""
    node = graph.call_function(target, args, kwargs or {})
    node.meta = {k: v for k, v in like.meta.items() if k not in ("val", "tensor_meta")}
    fake_args = map_arg(args, lambda a: a.meta["val"])  # a cat's list of operands too
    node.meta["val"] = target(*fake_args, **(kwargs or {}))
    return node

