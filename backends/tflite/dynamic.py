"""Dynamic dims (``torch.export.Dim``) in a TFLite model: ``shape_signature`` with -1.

The writer's lowerings read static shapes. A partition with dynamic dims is therefore
written at two sizes inside each dim's declared range (`sample_sizes`), each time from
a copy of the graph whose shapes are concrete (`concretize`), and the two models are
compared tensor by tensor (`resizable`):

- a dim that differs is dynamic: the first model's tensor gets -1 there in its
  ``shape_signature``, and LiteRT recomputes it when an input is resized;
- a RESHAPE whose shape constant differs in exactly one entry gets -1 in that entry;
- a SLICE that runs to the end of a dynamic dim (from a fixed begin) is written as the
  STRIDED_SLICE ending there (``end_mask``), which XNNPACK runs at any size;
- anything else that differs (another constant, an option, the operators themselves:
  a causal mask of the sequence length, a reshape with two dynamic dims) would be
  wrong at a third size, so its node is declined with that reason.

Support is answered on the concrete copy at the first size (`static_program`), so a
check never calls ``int()`` on a symbolic size (which would specialize the dim).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import sympy
import torch
from torch.export import ExportedProgram
from torch.fx import Node
from torch.fx.node import map_arg

from edgeport import BackendError, DeclineNodes
from edgeport.dynamic import example_sizes
from edgeport.subprogram import copy_graph

from .flatbuffer import ModelBuilder, Options
from .schema import tfl

Sizes = Mapping[sympy.Symbol, int]


def symbols(program: ExportedProgram) -> dict[sympy.Symbol, tuple[int, int | None]]:
    """Each dynamic dim's symbol with its (min, max), for the symbols the graph uses."""
    used: set[sympy.Symbol] = set()
    for node in program.graph.nodes:
        for value in _values(node.meta.get("val")):
            used |= _free(value)
    from torch.utils._sympy.numbers import int_oo  # says it is finite: compared by identity

    bounds = {}
    for symbol, bound in program.range_constraints.items():
        if symbol in used:
            bounds[symbol] = (int(bound.lower), None if bound.upper is int_oo else int(bound.upper))
    return bounds


def sample_sizes(program: ExportedProgram) -> tuple[dict[sympy.Symbol, int], dict[sympy.Symbol, int]]:
    """Two sizes per symbol inside its range: its example size and one more (or less).

    Sizes of 1 are avoided where the range allows: a size-1 dim is written differently
    (broadcast, squeezed away), so the two models would not be the same model.
    """
    hints = example_sizes(program)
    first, second = {}, {}
    for symbol, (low, high) in symbols(program).items():
        low = max(low, 2) if high is None or high >= 2 else low
        size = min(max(hints.get(symbol, low), low), high if high is not None else 1 << 30)
        other = size + 1 if high is None or size + 1 <= high else size - 1
        if other < low:
            raise BackendError(f"dynamic dim {symbol} has a single size in range [{low}, {high}]",
                               hint="declare it static, or widen its Dim range")
        first[symbol], second[symbol] = size, other
    return first, second


def concretize(program: ExportedProgram, sizes: Sizes) -> ExportedProgram:
    """A copy of ``program`` with every symbolic size replaced by its value in ``sizes``:
    tensor metadata become meta tensors of static shape, and nodes that compute a size
    (``sym_size``) become the ints they compute."""
    graph, _, signature = copy_graph(program)
    ints: dict[Node, int] = {}
    for node in list(graph.nodes):
        node.args = map_arg(node.args, lambda n: ints.get(n, n))
        node.kwargs = map_arg(node.kwargs, lambda n: ints.get(n, n))
        if "val" not in node.meta:
            continue
        val = node.meta["val"]
        node.meta = {**node.meta, "val": _concrete(val, sizes)}
        if isinstance(val, torch.SymInt) and node.op == "call_function":
            ints[node] = node.meta["val"]
    for node in reversed(list(graph.nodes)):
        if node in ints and not node.users:
            graph.erase_node(node)
    return ExportedProgram(
        root=torch.fx.GraphModule(program.graph_module, graph),
        graph=graph,
        graph_signature=signature,
        state_dict=program.state_dict,
        range_constraints={},
        module_call_graph=program.module_call_graph,
        constants=program.constants,
        verifiers=program.verifiers,
    )


def static_program(program: ExportedProgram) -> tuple[ExportedProgram, dict[str, Node]]:
    """``program`` as the writer's support checks see it: itself when every shape is
    static (and no nodes to look up), else its concrete copy at the first sample size
    with its nodes by name. Made once per program (`writer.WriterContext`)."""
    if not symbols(program):
        return program, {}
    concrete = concretize(program, sample_sizes(program)[0])
    return concrete, {n.name: n for n in concrete.graph.nodes}


# A write of one concrete program; the hook sees the pruned model before it is serialized.
Write = Callable[[ExportedProgram, Callable[[ModelBuilder], None]], Any]


def write_resizable(program: ExportedProgram, write: Write) -> Any:
    """The model of ``program`` written at its first sample size, with -1 in each
    tensor's shape_signature where the second size differs (see the module docstring)."""
    first, second = sample_sizes(program)
    other: list[ModelBuilder] = []
    write(concretize(program, second), other.append)
    return write(concretize(program, first), lambda builder: resizable(builder, other[0]))


def resizable(model: ModelBuilder, other: ModelBuilder) -> None:
    """Mark in ``model`` what differs in ``other`` (the same partition at other sizes);
    DeclineNodes for what cannot be resized."""
    codes = {v: k for k, v in vars(tfl().BuiltinOperator).items() if not k.startswith("_")}
    if [(r.code, r.inputs, r.outputs) for r in model.ops] != [(r.code, r.inputs, r.outputs) for r in other.ops] \
            or len(model.tensors) != len(other.tensors):
        first = next((r for r, o in zip(model.ops, other.ops) if (r.code, r.inputs) != (o.code, o.inputs)),
                     model.ops[-1])
        raise DeclineNodes({_node(model, first.outputs[0]): "its TFLite operators change with the size of a dynamic "
                                                            "dim (written for one size only)"})
    reshape_shapes = {r.inputs[1] for r in model.ops if codes[r.code] == "RESHAPE" and len(r.inputs) > 1}
    # SLICE sizes that reach the end of a dynamic dim: -1 ("to the end") says so at any size
    slice_sizes = {r.inputs[2]: (r.inputs[0], r.inputs[1]) for r in model.ops if codes[r.code] == "SLICE"}
    reasons: dict[str, str] = {}
    for op, twin in zip(model.ops, other.ops):
        if op.options != twin.options:
            reasons.setdefault(_node(model, op.outputs[0]), f"the options of its {codes[op.code]} depend on a "
                                                             "dynamic dim")
    for index, (tensor, twin) in enumerate(zip(model.tensors, other.tensors)):
        if len(tensor.shape) != len(twin.shape):
            reasons.setdefault(_node(model, index), "its rank changes with a dynamic dim")
            continue
        if tensor.shape != twin.shape:
            tensor.signature = tuple(-1 if a != b else a for a, b in zip(tensor.shape, twin.shape))
        mine, theirs = model.data(index), other.data(index)
        if mine is None or np.array_equal(mine, theirs):
            continue
        differs = np.flatnonzero(mine != theirs) if mine.shape == theirs.shape else ()
        if index in reshape_shapes and len(differs) == 1 and -1 not in mine:
            _infer(model, tensor, differs)
        elif index in slice_sizes and len(differs) and _to_the_end(differs, mine, theirs, model, other,
                                                                      *slice_sizes[index]):
            _infer(model, tensor, differs)
        else:
            what = "a reshape with two dynamic dims" if index in reshape_shapes else f"its constant {tensor.name}"
            reasons.setdefault(_node(model, index), f"{what} depends on the size of a dynamic dim")
    if reasons:
        raise DeclineNodes(reasons)
    _slices_to_the_end_as_strided(model, codes)


def _infer(model: ModelBuilder, tensor: Any, entries: np.ndarray) -> None:
    """Write -1 at ``entries`` of a constant shape or size tensor."""
    patched = model.buffers[tensor.buffer].copy()
    patched[entries] = -1
    model.buffers[tensor.buffer] = patched


def _to_the_end(entries: np.ndarray, mine: np.ndarray, theirs: np.ndarray, model: ModelBuilder,
                other: ModelBuilder, source: int, begin: int) -> bool:
    """The slice takes each of these dims of its input from its (fixed) begin to the end,
    at both sizes."""
    start, other_start = model.data(begin), other.data(begin)
    if start is None or other_start is None or not np.array_equal(start, other_start):
        return False
    return all(start[i] + mine[i] == model.tensors[source].shape[i]
               and start[i] + theirs[i] == other.tensors[source].shape[i] for i in entries)


def _slices_to_the_end_as_strided(model: ModelBuilder, codes: Mapping[int, str]) -> None:
    """Each SLICE with a size of -1 as the STRIDED_SLICE that ends its dims at the end
    (``end_mask``): the same slice, and one XNNPACK's delegate takes (LiteRT 2.3 leaves a
    SLICE of size -1 to TFLite's kernel, which splits the delegated graph around it)."""
    strided = next(code for code, name in codes.items() if name == "STRIDED_SLICE")
    for op in model.ops:
        if codes[op.code] != "SLICE":
            continue
        begin, sizes = model.data(op.inputs[1]), model.data(op.inputs[2])
        if begin is None or sizes is None or -1 not in sizes:
            continue  # (a size computed at run time: `sized_constants`' narrowing)
        end = np.array([0 if n == -1 else b + n for b, n in zip(begin, sizes)], dtype=np.int32)
        end_mask = sum(1 << i for i, n in enumerate(sizes) if n == -1)
        name, type_ = model.tensors[op.outputs[0]].name, model.tensors[op.inputs[1]].type
        added = [model.tensor(data.shape, type_, f"{name}/{what}", data)
                 for what, data in (("end", end), ("strides", np.ones_like(end)))]
        op.code, op.inputs = strided, [op.inputs[0], op.inputs[1], *added]
        op.options = Options("StridedSliceOptions", {"EndMask": end_mask})


def _node(model: ModelBuilder, tensor: int) -> str:
    """The node a tensor belongs to: the node whose op writes it, or else (a constant)
    the first that reads it. Computed tensors are named "<node>" or "<node>/<part>"."""
    op = next((r for r in model.ops if tensor in r.outputs), None) or \
        next((r for r in model.ops if tensor in r.inputs), None)
    named = op.outputs[0] if op is not None else tensor
    return model.tensors[named].name.split("/", 1)[0]


def _values(val: Any) -> list[Any]:
    if isinstance(val, (list, tuple)):
        return [v for item in val for v in _values(item)]
    return [val]


def _free(value: Any) -> set[sympy.Symbol]:
    if isinstance(value, torch.SymInt):
        return set(value.node.expr.free_symbols)
    if isinstance(value, torch.Tensor):
        return {s for d in value.shape if isinstance(d, torch.SymInt) for s in d.node.expr.free_symbols}
    return set()


def _size(d: Any, sizes: Sizes) -> int:
    if isinstance(d, torch.SymInt):
        return int(d.node.expr.xreplace(dict(sizes)))
    return int(d)


def _concrete(val: Any, sizes: Sizes) -> Any:
    if isinstance(val, torch.Tensor):
        return torch.empty([_size(d, sizes) for d in val.shape], dtype=val.dtype, device="meta")
    if isinstance(val, torch.SymInt):
        return _size(val, sizes)
    if isinstance(val, (list, tuple)):
        return type(val)(_concrete(v, sizes) for v in val)
    return val


