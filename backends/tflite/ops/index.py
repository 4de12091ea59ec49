"""Ops that pick or place by position: argmax/argmin, flip, gather, scatter, slice_scatter,
index_put.

argmax/argmin are ARG_MAX/ARG_MIN, which keep the first extreme on ties, as torch
does (both compare strictly). They differ on NaN: torch picks a NaN as the maximum and
the minimum, TFLite's comparisons skip it. slice_scatter with step 1 is a
CONCATENATION of the input's parts before and after the slice around the source.

flip is a REVERSE_V2 per flipped dim (a bidirectional GRU or LSTM reads its sequence
backwards), in the value's layout; LiteRT's builtin kernel runs it, as every gather.

gather (``torch.gather``, as RoBERTa reads its token types at its position ids) is one
GATHER_ND: each output position's coordinates are its own, with the index read at run
time in place of the gathered dim, so any dim and any index works. Like every gather,
it runs on LiteRT's builtin kernel.

index_put (and index_copy, which decomposes to it) writing one position along one dim,
``x[:, :, pos] = v`` as a KV-cache write does, is a DYNAMIC_UPDATE_SLICE at a start
built at run time (FLOOR_MOD wraps a negative position as torch does). TFLite has no
scatter into an existing tensor: SCATTER_ND builds a new one from zeros and sums
repeated positions (torch keeps one of them), so several positions are declined.
DYNAMIC_UPDATE_SLICE runs on LiteRT's builtin kernel (XNNPACK does not take it).

scatter (``torch.scatter``, a one-hot as ``zeros.scatter(1, labels[:, None], 1.0)``) with
one position along dim per row of the index is two SCATTER_NDs at gather's coordinates,
the values and ones, and a SELECT_V2 of x where no one was written: no two coordinates are
alike then. An index of several positions along dim is declined, their repeats being summed.
scatter_add sums repeats as torch does: x plus one SCATTER_ND, any index.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..lowering import ANY, IsConst, aten, lowering, meta, shape
from ..schema import tfl

_ARG = {aten.argmax.default: ("ARG_MAX", "ArgMaxOptions"), aten.argmin.default: ("ARG_MIN", "ArgMinOptions")}


def _arg_dim(node: Node) -> tuple[int | None, bool]:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return dim, bool(keepdim)


def _check_arg(node: Node, is_const: IsConst) -> str | None:
    if meta(node.args[0]).dtype not in (torch.float32, torch.int32, torch.int64):
        return f"{meta(node.args[0]).dtype} input"
    if math.prod(shape(node.args[0])) == 0:
        return "an empty input"
    return None


@lowering(*_ARG, writes=lambda node, is_const: frozenset({_ARG[node.target][0]}),
          dtypes=frozenset({torch.float32, torch.int32, torch.int64}), check=_check_arg)
def arg_extreme(em: Emitter, node: Node) -> Value:
    """The index of the first maximum (minimum) along dim, or of the flattened input."""
    op, options = _ARG[node.target]
    v = em.to_identity(em.value(node.args[0]))
    dim, keepdim = _arg_dim(node)
    if dim is None:
        v = em.reshape(v, (math.prod(v.shape),))
        dim = 0
    dim = layout.normalize_dim(dim, len(v.shape))
    reduced = tuple(s for i, s in enumerate(v.shape) if i != dim)
    out = em.new(reduced, torch.int64, node.name if not keepdim else node.name + "/reduced")
    output_type = tfl().TensorType.INT32  # int64 values are int32 inside the model
    em.op(op, [v.tensor, em.int_const([dim], "axis")], [out], Options(options, {"OutputType": output_type}))
    return em.reshape(out, meta(node).shape, node.name) if keepdim else out


def _check_flip(node: Node, is_const: IsConst) -> str | None:
    return None if shape(node.args[0]) else "a 0-d input (REVERSE_V2 reverses an axis)"


@lowering(aten.flip.default, writes=frozenset({"REVERSE_V2"}), dtypes=ANY, check=_check_flip)
def flip(em: Emitter, node: Node) -> Value:
    """x with the order along each of dims reversed: one REVERSE_V2 per dim (LiteRT's
    kernel takes one axis at a time)."""
    v = em.value(node.args[0])
    dims = sorted({layout.normalize_dim(d, len(v.shape)) for d in node.args[1]})
    for i, dim in enumerate(dims):
        name = node.name if i == len(dims) - 1 else f"{node.name}/{dim}"
        out = em.new(v.shape, v.dtype, name, v.perm)
        em.op("REVERSE_V2", [v.tensor, em.int_const([layout.inverse(v.perm)[dim]], "axis")], [out],
              Options("ReverseV2Options", {}))
        v = out
    return v


def _check_gather(node: Node, is_const: IsConst) -> str | None:
    if not shape(node.args[0]) or not shape(node.args[2]):
        return "a 0-d input or index (GATHER_ND reads coordinates along the index's last axis)"
    if meta(node.args[2]).dtype not in (torch.int32, torch.int64):
        return f"a {meta(node.args[2]).dtype} index"
    return None


def _coordinates(em: Emitter, node: Node) -> Value:
    """For every position p of `node`'s index (args[2]) along dim (args[1]), p with
    p[dim] replaced by index[p]: shape (*index.shape, rank), int32, as GATHER_ND and
    SCATTER_ND read them."""
    index = em.cast(em.to_identity(em.value(node.args[2])), torch.int32)
    rank = len(index.shape)
    dim = layout.normalize_dim(node.args[1], rank)
    column = index.shape + (1,)  # one coordinate per position: (*index.shape, 1)
    parts = []
    for d in range(rank):
        if d == dim:
            parts.append(em.reshape(index, column, f"{node.name}/index").tensor)
        else:
            along = torch.arange(index.shape[d], dtype=torch.int32).view([-1 if e == d else 1 for e in range(rank)])
            parts.append(em.const(along.expand(index.shape).reshape(column).contiguous(), f"{node.name}/positions"))
    coordinates = em.new(index.shape + (rank,), torch.int32, f"{node.name}/coordinates")
    em.op("CONCATENATION", parts, [coordinates], Options("ConcatenationOptions", {"Axis": rank}))
    return coordinates


@lowering(aten.gather.default, writes=frozenset({"CONCATENATION", "GATHER_ND"}), dtypes=ANY, check=_check_gather)
def gather(em: Emitter, node: Node) -> Value:
    """out[p] = x[p with p[dim] replaced by index[p]] for every position p of the index."""
    x = em.to_identity(em.value(node.args[0]))
    coordinates = _coordinates(em, node)
    out = em.out(node)
    em.op("GATHER_ND", [x.tensor, coordinates.tensor], [out])
    return out


def _check_scatter_positions(node: Node, is_const: IsConst) -> str | None:
    gathered = _check_gather(node, is_const)
    if gathered:
        return gathered
    index, dim = shape(node.args[2]), node.args[1]
    if index[dim] != 1:
        return (f"an index of {index[dim]} positions along dim {dim}: they may repeat, and SCATTER_ND sums "
                "repeated positions (torch keeps one); one position per row (a one-hot) is written")
    if meta(node.args[0]).dtype not in (torch.float32, torch.int32, torch.int64):
        return f"{meta(node.args[0]).dtype} input"
    return None


@lowering(aten.scatter.src, aten.scatter.value, writes=frozenset({"CONCATENATION", "SLICE", "SCATTER_ND",
                                                                  "NOT_EQUAL", "SELECT_V2"}),
          dtypes=ANY, check=_check_scatter_positions)
def scatter(em: Emitter, node: Node) -> Value:
    """x with x[p with p[dim] replaced by index[p]] = src[p] for every position p of the
    index: SCATTER_ND writes src at those coordinates into zeros, and a second one writes
    ones, selecting where x is replaced. With one position along dim per row, no two
    coordinates are alike (SCATTER_ND would sum them)."""
    x = em.to_identity(em.value(node.args[0]))
    coordinates = _coordinates(em, node)
    rows = coordinates.shape[:-1]
    size = em.int_const(list(x.shape), "shape")
    scattered = _scattered(em, node, x, coordinates)
    marks = em.new(x.shape, torch.float32, f"{node.name}/marks")
    em.op("SCATTER_ND", [coordinates.tensor, em.const(torch.ones(rows), f"{node.name}/ones"), size], [marks])
    written = em.elementwise("NOT_EQUAL", [marks, 0.0], x.shape, torch.bool, f"{node.name}/written", torch.float32)
    out = em.out(node)
    em.op("SELECT_V2", [written.tensor, scattered.tensor, x.tensor], [out])
    return out


def _scattered(em: Emitter, node: Node, x: Value, coordinates: Value) -> Value:
    """SCATTER_ND of the node's src (args[3]: a tensor, read where the index has
    positions, or a number) at ``coordinates`` into zeros shaped like ``x``."""
    rows = coordinates.shape[:-1]
    src = node.args[3]
    if isinstance(src, Node):
        values = em.to_identity(em.value(src, x.dtype))
        if values.shape != rows:  # torch reads src where the index has positions
            part = em.new(rows, x.dtype, f"{node.name}/src")
            em.op("SLICE", [values.tensor, em.int_const([0] * len(rows), "begin"), em.int_const(list(rows), "size")],
                  [part])
            values = part
        updates = values.tensor
    else:
        updates = em.const(torch.full(rows, src, dtype=x.dtype), f"{node.name}/value")
    scattered = em.new(x.shape, x.dtype, f"{node.name}/scattered")
    em.op("SCATTER_ND", [coordinates.tensor, updates, em.int_const(list(x.shape), "shape")], [scattered])
    return scattered


def _check_scatter_add(node: Node, is_const: IsConst) -> str | None:
    gathered = _check_gather(node, is_const)
    if gathered:
        return gathered
    if meta(node.args[0]).dtype != torch.float32:  # LiteRT refused an int32 one (its SCATTER_ND or ADD)
        return f"{meta(node.args[0]).dtype} input"
    return None


@lowering(aten.scatter_add.default, writes=frozenset({"CONCATENATION", "SLICE", "SCATTER_ND", "ADD"}), dtypes=ANY,
          check=_check_scatter_add)
def scatter_add(em: Emitter, node: Node) -> Value:
    """x plus src summed at its coordinates: SCATTER_ND sums repeated coordinates, as
    torch's scatter_add does (in another order: float sums may differ in the last bits)."""
    x = em.to_identity(em.value(node.args[0]))
    scattered = _scattered(em, node, x, _coordinates(em, node))
    out = em.out(node)
    em.op("ADD", [x.tensor, scattered.tensor], [out])
    return out


def _check_scatter(node: Node, is_const: IsConst) -> str | None:
    step = node.args[5] if len(node.args) > 5 else node.kwargs.get("step", 1)
    return None if step == 1 else f"step {step}"


@lowering(aten.slice_scatter.default, writes=frozenset({"CONCATENATION", "SLICE"}), dtypes=ANY,
          check=_check_scatter)
def slice_scatter(em: Emitter, node: Node) -> Value:
    """x with x[start:end] along dim replaced by src: [x before | src | x after]."""
    x, src = em.to_identity(em.value(node.args[0])), em.to_identity(em.value(node.args[1]))
    rank = len(x.shape)
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = layout.normalize_dim(args[2] if args[2] is not None else node.kwargs.get("dim", 0), rank)
    start = args[3] if args[3] is not None else node.kwargs.get("start")
    end = args[4] if args[4] is not None else node.kwargs.get("end")
    start, end, _ = slice(start, end, 1).indices(x.shape[dim])
    end = max(end, start)
    parts = []
    for name, (lo, hi) in (("before", (0, start)), ("after", (end, x.shape[dim]))):
        if hi > lo:
            size = list(x.shape)
            size[dim] = hi - lo
            begin = [lo if d == dim else 0 for d in range(rank)]
            part = em.new(size, x.dtype, f"{node.name}/{name}")
            em.op("SLICE", [x.tensor, em.int_const(begin, "begin"), em.int_const(size, "size")], [part])
            parts.append(part)
    parts.insert(1 if start > 0 else 0, src)
    if len(parts) == 1:
        return em.reshape(src, meta(node).shape, node.name)
    out = em.out(node)
    em.op("CONCATENATION", [p.tensor for p in parts], [out], Options("ConcatenationOptions", {"Axis": dim}))
    return out


def _index_put_args(node: Node) -> tuple[int, Node, bool]:
    """The dim the one index tensor writes along, that tensor, and accumulate."""
    placed = [(dim, index) for dim, index in enumerate(node.args[1]) if index is not None]
    accumulate = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
    return (*placed[0], bool(accumulate)) if len(placed) == 1 else (-1, None, bool(accumulate))


def _check_index_put(node: Node, is_const: IsConst) -> str | None:
    dim, index, accumulate = _index_put_args(node)
    if index is None:
        return ("several index tensors: only one position along one dim is a DYNAMIC_UPDATE_SLICE (TFLite has no "
                "scatter into a tensor; SCATTER_ND builds a new one)")
    if accumulate:
        return "accumulate=True: DYNAMIC_UPDATE_SLICE replaces values"
    if meta(index).dtype not in (torch.int32, torch.int64) or math.prod(shape(index)) != 1:
        return (f"a {meta(index).dtype} index of shape {tuple(shape(index))}: only one position is a "
                "DYNAMIC_UPDATE_SLICE (SCATTER_ND sums repeated positions, torch keeps one)")
    size = list(shape(node.args[0]))
    size[dim] = 1
    if math.prod(shape(node.args[2])) != math.prod(size):
        return f"values of shape {tuple(shape(node.args[2]))} broadcast to the written slice {tuple(size)}"
    if meta(node.args[0]).dtype not in (torch.float32, torch.int32, torch.int64, torch.bool):
        return f"{meta(node.args[0]).dtype} input"
    return None


@lowering(aten.index_put.default, writes=frozenset({"FLOOR_MOD", "CONCATENATION", "DYNAMIC_UPDATE_SLICE"}),
          dtypes=ANY, check=_check_index_put)
def index_put(em: Emitter, node: Node) -> Value:
    """x with the slice at one position along dim replaced by the values."""
    x = em.to_identity(em.value(node.args[0]))
    dim, index, _ = _index_put_args(node)
    size = list(x.shape)
    size[dim] = 1
    update = em.reshape(em.to_identity(em.value(node.args[2], x.dtype)), size, node.name + "/update")
    position = em.reshape(em.cast(em.to_identity(em.value(index)), torch.int32), (1,), node.name + "/index")
    wrapped = em.new((1,), torch.int32, node.name + "/position")
    em.op("FLOOR_MOD", [position.tensor, em.int_const([x.shape[dim]], "size")], [wrapped])
    start = wrapped
    if len(x.shape) > 1:
        start = em.new((len(x.shape),), torch.int32, node.name + "/start")
        parts = [em.int_const([0] * dim, "zeros")] if dim else []
        parts.append(wrapped.tensor)
        if dim < len(x.shape) - 1:
            parts.append(em.int_const([0] * (len(x.shape) - dim - 1), "zeros"))
        em.op("CONCATENATION", parts, [start], Options("ConcatenationOptions", {"Axis": 0}))
    out = em.out(node)
    em.op("DYNAMIC_UPDATE_SLICE", [x.tensor, update.tensor, start.tensor], [out])
    return out
