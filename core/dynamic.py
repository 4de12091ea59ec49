"""Dynamic dims (``torch.export.Dim``) at export: graphs backends can take, and a warning
when they do not.

torch.export writes ``x.flatten(1)`` of a dynamic batch as ``view(x, [sym_size(x, 0),
128])``: a ``sym_size`` node computes the batch size as a Python int at run time. No
backend can take a node that produces an int, so each would be a portable step and
every view after it would read an int from outside its partition. `infer_view_sizes`
writes such a size as -1 instead (the one size a view may leave to be inferred), which
computes the same and leaves the ``sym_size`` unread.

`warn_dynamic_declines` says, once per backend, when a selected backend declined nodes
whose shapes have dynamic dims: those run as portable torch, which users otherwise
learn only from the report.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch.export import ExportedProgram
from torch.fx import Node

log = logging.getLogger("edgeport.export")

aten = torch.ops.aten
_VIEWS = frozenset({aten.view.default, aten._unsafe_view.default, aten.reshape.default})


def infer_view_sizes(program: ExportedProgram) -> int:
    """Rewrite (in place) the size lists of views and expands so that they read no size
    computed at run time where they need not, then drop the size nodes nothing reads.
    Returns how many nodes changed.

    A view whose result has one dynamic dim takes its static dims as ints and infers
    that one (-1); an expand keeps (-1) each dim its input already has.
    """
    graph = program.graph_module.graph
    changed = 0
    for node in graph.nodes:
        if node.op != "call_function" or not any(isinstance(s, Node) for s in _sizes(node)):
            continue
        sizes = _view_sizes(node) if node.target in _VIEWS else _expand_sizes(node)
        if sizes is not None:
            node.args = (node.args[0], sizes, *node.args[2:])
            changed += 1
    if changed:
        _drop_unread_sizes(graph)
        program.graph_module.recompile()
    return changed


def _sizes(node: Node) -> list[Any]:
    if node.target in _VIEWS or node.target == aten.expand.default:
        return list(node.args[1])
    return []


def _view_sizes(node: Node) -> list[int] | None:
    shape = node.meta["val"].shape
    dynamic = [i for i, d in enumerate(shape) if isinstance(d, torch.SymInt)]
    if len(dynamic) != 1:
        return None
    return [-1 if i == dynamic[0] else int(d) for i, d in enumerate(shape)]


def _expand_sizes(node: Node) -> list[Any] | None:
    source = node.args[0].meta["val"].shape
    sizes = list(node.args[1])
    offset = len(sizes) - len(source)
    for i, size in enumerate(sizes):
        if isinstance(size, Node):
            kept = source[i - offset] if i >= offset else None
            if not (isinstance(kept, torch.SymInt) and kept.node.expr == size.meta["val"].node.expr):
                return None
            sizes[i] = -1
    return sizes


def _drop_unread_sizes(graph: torch.fx.Graph) -> None:
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and not node.users and isinstance(node.meta.get("val"), torch.SymInt):
            graph.erase_node(node)


def is_dynamic(node: Node) -> bool:
    """The node produces a tensor with a dynamic dim."""
    val = node.meta.get("val")
    values = val if isinstance(val, (list, tuple)) else [val]
    return any(isinstance(v, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in v.shape) for v in values)


def example_sizes(program: ExportedProgram) -> dict[Any, int]:
    """The size each dynamic dim's symbol (a sympy Symbol) had in the example inputs."""
    sizes = {}
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor):
            for d in val.shape:
                if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol and d.node.hint is not None:
                    sizes[d.node.expr] = int(d.node.hint)
    return sizes


def dynamic_declines(program: ExportedProgram, report: Mapping[str, Any], backends: list[str]) -> dict[str, list[dict]]:
    """Per selected backend, the report rows of nodes with dynamic dims it declined and
    that run as portable torch."""
    dynamic = {n.name for n in program.graph.nodes if n.op == "call_function" and is_dynamic(n)}
    declined: dict[str, list[dict]] = {}
    for row in report.get("nodes", []):
        if row.get("name") in dynamic and row.get("backend") == "portable":
            for backend, reason in row.get("reasons", {}).items():
                if backend in backends and reason:
                    declined.setdefault(backend, []).append(row)
    return declined


def warn_dynamic_declines(method: str, program: ExportedProgram, report: Mapping[str, Any],
                          backends: list[str]) -> set[str]:
    """Log one warning line per backend that declined nodes with dynamic dims; return
    those backends."""
    declines = dynamic_declines(program, report, backends)
    for backend, rows in declines.items():
        first = rows[0]
        log.warning("%s: %s declined %d node(s) whose shapes have dynamic dims, which run as portable torch; "
                    "first: %s (%s), its reason: %s",
                    method, backend, len(rows), first["name"], first.get("op", ""), first["reasons"][backend])
    return set(declines)
