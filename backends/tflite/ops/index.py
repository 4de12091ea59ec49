"""Ops that pick or place by position: argmax/argmin, slice_scatter.

argmax/argmin are ARG_MAX/ARG_MIN, which keep the first extreme on ties, as torch
does (both compare strictly). They differ on NaN: torch picks a NaN as the maximum and
the minimum, TFLite's comparisons skip it. slice_scatter with step 1 is a
CONCATENATION of the input's parts before and after the slice around the source.
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
