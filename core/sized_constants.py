"""Values computed from weights, literals and dynamic sizes only: stored once at their
largest size, narrowed to the input's size at run time.

With a dynamic sequence length T, a BERT computes its position ids as a slice of a
buffer to the input's length (``position_ids[:, :T]``), its token types by gathering a
zeros buffer at those positions, and an all-true attention mask from ``arange(T)``
expanded to (B, 1, T, T). `fold_constants` leaves them (their shape is not static), and
each reads a size torch computes at run time (``sym_size``), which no backend can take:
they would be portable steps that split the model.

`fold_sized_constants` computes each such value once, at the largest size of each of its
dynamic dims (the ``Dim``'s max), stores it as a lifted constant, and reads it through
`narrow_to`, an op that keeps the leading part of it as long as the input's dim. That is
exact when the value at every size is the leading part of its largest value (position
ids, token types, masks of a sequence length). It is checked at the range's smallest
size, the example's and one below the largest; a value that fails (``arange(T) / T``), a
dim that is an expression of sizes (``2 * T``), an unbounded dim, or a value larger than
`fold.SIZE_ALLOWANCE` stays as it was.

An all-true mask read only by attention (BERT's when no attention mask is given) is
dropped instead: attention keeps every score without it.

`narrow_to` is a torch custom op (``torch.ops.edgeport.narrow_to``), so a portable step
runs it as torch, and a backend may lower it (the TFLite writer: SHAPE of the input,
then a SLICE of the stored value, which LiteRT resizes with the input).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import sympy
import torch
from torch.export import ExportedProgram
from torch.fx import Graph, Node

from . import fold
from .dynamic import example_sizes
from .fold import SIZE_ALLOWANCE, FoldResult

Sizes = Mapping[sympy.Symbol, int]


@torch.library.custom_op("edgeport::narrow_to", mutates_args=())
def narrow_to(table: torch.Tensor, like: torch.Tensor, dims: Sequence[int], like_dims: Sequence[int]) -> torch.Tensor:
    """The leading part of `table` whose dim ``dims[i]`` is as long as ``like``'s dim ``like_dims[i]``."""
    out = table
    for dim, like_dim in zip(dims, like_dims):
        out = out.narrow(dim, 0, like.shape[like_dim])
    return out.clone()


@narrow_to.register_fake
def _narrow_to_fake(table: torch.Tensor, like: torch.Tensor, dims: Sequence[int],
                    like_dims: Sequence[int]) -> torch.Tensor:
    shape = list(table.shape)
    for dim, like_dim in zip(dims, like_dims):
        shape[dim] = like.shape[like_dim]
    return table.new_empty(shape)


NARROW_TO = torch.ops.edgeport.narrow_to.default


def fold_sized_constants(program: ExportedProgram) -> FoldResult:
    """``program`` with each value computed from weights, literals and sizes only stored
    at its largest size and narrowed at run time (see the module docstring); ``program``
    itself when there is none."""
    bounds = _bounded_symbols(program)
    sources = _size_sources(program, bounds)
    if not sources:
        return FoldResult(program, {})
    graph = program.graph_module.graph
    values = fold._stored_values(program)
    refused = set(graph.output_node().all_input_nodes)  # returned values stay computed
    stored: dict[Node, torch.Tensor] = {}
    narrowings: dict[Node, list[tuple[int, sympy.Symbol]]] = {}
    while True:  # a refused value (too big, not a prefix) leaves its inputs to be stored instead
        sized = _sized_nodes(graph, values, refused)
        frontier = _frontier(graph, sized)
        pending = [n for n in frontier if n not in stored]
        for node in pending:
            narrowing = _narrowing(node, sources)
            largest = None if narrowing is None else _largest_prefix(node, narrowing, sized, values, bounds,
                                                                     example_sizes(program))
            if largest is None:
                refused.add(node)
            else:
                stored[node], narrowings[node] = largest, narrowing
        if all(n in stored for n in pending):
            break
    stored = {n: v for n, v in stored.items() if n in frontier}
    if not stored:
        return FoldResult(program, {})

    def read_narrowed(graph: Graph, table: Node, replaced: Node, copies: dict[Node, Node]) -> Node:
        if _masks_nothing(replaced, stored[replaced]):
            for user in list(copies[replaced].users):
                _drop_mask(user)
            return table  # read by no one now: dropped with the stored value
        out = table
        for source, dims in _by_source(narrowings[replaced], sources).items():
            with graph.inserting_before(copies[replaced]):
                out = graph.call_function(NARROW_TO, (out, copies[source], [d for d, _ in dims],
                                                      [k for _, k in dims]))
        out.meta = {"val": replaced.meta["val"]}
        return out

    return fold._replace(program, stored, read=read_narrowed)


_SDPA = torch.ops.aten.scaled_dot_product_attention.default
_SDPA_MASK = 3  # attn_mask's position in sdpa's arguments


def _masks_nothing(node: Node, largest: torch.Tensor) -> bool:
    """An all-true bool mask read only as attention masks: attention keeps every score
    without it, so no one needs it (BERT's mask when no attention mask is given)."""
    return largest.dtype == torch.bool and bool(largest.all()) and all(
        u.target == _SDPA and _mask_of(u) is node for u in node.users)


def _mask_of(sdpa: Node) -> Any:
    return sdpa.args[_SDPA_MASK] if len(sdpa.args) > _SDPA_MASK else sdpa.kwargs.get("attn_mask")


def _drop_mask(sdpa: Node) -> None:
    if len(sdpa.args) > _SDPA_MASK:
        sdpa.args = (*sdpa.args[:_SDPA_MASK], None, *sdpa.args[_SDPA_MASK + 1:])
    else:
        sdpa.kwargs = {**sdpa.kwargs, "attn_mask": None}


def _bounded_symbols(program: ExportedProgram) -> dict[sympy.Symbol, tuple[int, int]]:
    """Each dynamic dim's symbol with its (min, max), for those with a finite max (a
    float symbol, such as ``x.item()`` makes, is no dim: its range is (-oo, oo))."""
    from torch.utils._sympy.numbers import int_oo

    return {s: (max(int(r.lower), 1), int(r.upper)) for s, r in program.range_constraints.items()
            if r.upper is not int_oo and isinstance(s, sympy.Symbol) and not r.is_float and r.upper.is_finite}


def _size_sources(program: ExportedProgram, bounds: Mapping[sympy.Symbol, Any]) -> dict[sympy.Symbol, tuple[Node, int]]:
    """For each bounded symbol, a user input and the dim of it that is that symbol."""
    user = set(program.graph_signature.user_inputs)
    sources: dict[sympy.Symbol, tuple[Node, int]] = {}
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op != "placeholder" or node.name not in user or not isinstance(val, torch.Tensor):
            continue
        for dim, size in enumerate(val.shape):
            expr = size.node.expr if isinstance(size, torch.SymInt) else None
            if expr in bounds and expr not in sources:
                sources[expr] = (node, dim)
    return sources


def _sized_nodes(graph: Graph, values: Mapping[Node, torch.Tensor], refused: set[Node]) -> set[Node]:
    """Nodes computed from stored values, literals and sizes only (but not `refused`). A
    node whose value is a size (``sym_size``, ``2 * T``) counts whatever it reads: it is
    computed from sizes."""
    sized: set[Node] = set(values)
    for node in graph.nodes:
        if node.op != "call_function" or node in refused:
            continue
        if isinstance(node.meta.get("val"), torch.SymInt):
            sized.add(node)
        elif fold.pure(node) and all(n in sized for n in node.all_input_nodes):
            sized.add(node)
    return sized


def _frontier(graph: Graph, sized: set[Node]) -> list[Node]:
    """Sized tensor values of a dynamic shape that a node computed at run time reads."""
    return [n for n in graph.nodes if n.op == "call_function" and n in sized
            and isinstance(n.meta.get("val"), torch.Tensor) and not fold._static(n)
            and any(u not in sized for u in n.users)]


def _narrowing(node: Node, sources: Mapping[sympy.Symbol, Any]) -> list[tuple[int, sympy.Symbol]] | None:
    """(dim, symbol) for each dynamic dim of the node's value, or None when a dim is not
    one bounded symbol of a user input."""
    narrowing = []
    for dim, size in enumerate(node.meta["val"].shape):
        if isinstance(size, torch.SymInt):
            expr = size.node.expr
            if expr not in sources:
                return None
            narrowing.append((dim, expr))
    return narrowing


def _largest_prefix(node: Node, narrowing: list[tuple[int, sympy.Symbol]], sized: set[Node],
                    values: Mapping[Node, torch.Tensor], bounds: Mapping[sympy.Symbol, tuple[int, int]],
                    hints: Mapping[sympy.Symbol, int]) -> torch.Tensor | None:
    """The node's value at the largest sizes, if its values at the checked sizes are its
    leading parts and it is small enough to store; else None."""
    symbols = {s for _, s in narrowing}
    largest_sizes = {s: hi for s, (_, hi) in bounds.items()}
    try:
        largest = _evaluate(node, sized, values, largest_sizes)
        if largest.numel() * largest.element_size() > SIZE_ALLOWANCE:
            return None
        for pick in (lambda s: bounds[s][0], lambda s: hints.get(s, bounds[s][0]), lambda s: bounds[s][1] - 1):
            sizes = {**largest_sizes, **{s: min(max(pick(s), bounds[s][0]), bounds[s][1]) for s in symbols}}
            expected = largest
            for dim, symbol in narrowing:
                expected = expected.narrow(dim, 0, sizes[symbol])
            if not torch.equal(_evaluate(node, sized, values, sizes), expected):
                return None
    except Exception:  # noqa: BLE001 - a value that does not compute at some size is not folded
        return None
    return largest


def _evaluate(node: Node, sized: set[Node], values: Mapping[Node, torch.Tensor], sizes: Sizes) -> torch.Tensor:
    """The node's value with every dynamic dim at ``sizes``, computed with torch."""
    needed, stack = {node}, [node]
    while stack:
        for n in stack.pop().all_input_nodes:
            if n not in needed and n in sized and n not in values:
                needed.add(n)
                if not isinstance(n.meta.get("val"), torch.SymInt):
                    stack.append(n)
    env: dict[Node, Any] = dict(values)
    with torch.no_grad():
        for n in node.graph.nodes:
            if n not in needed:
                continue
            val = n.meta.get("val")
            if isinstance(val, torch.SymInt):
                env[n] = int(val.node.expr.xreplace(dict(sizes)))
            else:
                env[n] = fold._run(n, env)
    return env[node]


def _by_source(narrowing: list[tuple[int, sympy.Symbol]],
               sources: Mapping[sympy.Symbol, tuple[Node, int]]) -> dict[Node, list[tuple[int, int]]]:
    """The narrowing grouped by the input each size is read from: input -> [(dim, its dim)]."""
    grouped: dict[Node, list[tuple[int, int]]] = {}
    for dim, symbol in narrowing:
        source, source_dim = sources[symbol]
        grouped.setdefault(source, []).append((dim, source_dim))
    return grouped
