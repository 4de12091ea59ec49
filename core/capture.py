"""Capture: ``torch.export`` the model, then decompose it to the edge op set.

Decomposition keeps undecomposed every op that a selected backend lists in
``keep_ops()`` and supports at one of its nodes; an op kept for nobody is decomposed
after all, so other backends get the pieces they may know.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from .backend import Backend, SupportContext
from .errors import EdgeportError


def capture(
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    backends: Sequence[Backend],
    options: Mapping[str, Any],
    dynamic_shapes: Any = None,
) -> ExportedProgram:
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    try:
        with _quiet_torch():
            exported = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeportError(
            f"torch.export could not capture the model: {first}",
            hint="run with --debug for torch's full message; see https://pytorch.org/docs/stable/export.html",
        ) from exc
    keep = {op: [b for b in backends if op in b.keep_ops()] for b in backends for op in b.keep_ops()}
    program = _decompose(exported, set(keep))
    unwanted = {op for op in keep if _kept_for_nobody(program, op, keep[op], options)}
    if unwanted:  # decompose again (a second trace), only when it changes something
        program = _decompose(exported, set(keep) - unwanted)
    return drop_proven_assertions(program)


# Assertions torch.export inserts about facts it has already proved for the captured
# shapes and dtypes (every Hugging Face decoder LM has them). They compute nothing,
# every backend would decline them, and as portable steps they would cost a call each.
PROVEN_ASSERTIONS = frozenset({torch.ops.aten._assert_tensor_metadata.default})


def drop_proven_assertions(program: ExportedProgram) -> ExportedProgram:
    """Erase `PROVEN_ASSERTIONS` nodes from ``program`` (in place) and return it."""
    graph = program.graph_module.graph
    dropped = [n for n in graph.nodes if n.op == "call_function" and n.target in PROVEN_ASSERTIONS and not n.users]
    for node in dropped:
        graph.erase_node(node)
    if dropped:
        program.graph_module.recompile()
    return program


def _decompose(exported: ExportedProgram, keep: set[Any]) -> ExportedProgram:
    table = torch.export.default_decompositions()
    for op in keep:
        table.pop(op, None)
    with _quiet_torch():
        return exported.run_decompositions(table)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch.export warns about its own pytree internals on every call; users cannot act on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
        yield


def _kept_for_nobody(program: ExportedProgram, op: Any, backends: Sequence[Backend], options: Mapping[str, Any]) -> bool:
    """True if ``op`` occurs in the program and no backend that kept it supports it."""
    nodes = [n for n in program.graph.nodes if n.op == "call_function" and n.target == op]
    contexts = [(b, SupportContext(program, options.get(b.name))) for b in backends]
    return bool(nodes) and not any(_supports(b, n, ctx) for n in nodes for b, ctx in contexts)


def _supports(backend: Backend, node: Node, ctx: SupportContext) -> bool:
    try:
        return bool(backend.support(node, ctx))
    except Exception:  # a raising check is a "no"; lowering records its reason
        return False
