"""Ops that pick values by their order: max and min along a dim with their indices,
topk and sort.

TFLite's TOPK_V2 gives the k largest values along the last axis, largest first, with
their int32 indices; REDUCE_MAX/MIN and ARG_MAX/MIN give an extreme and where it is.
XNNPACK takes none of them: LiteRT runs them with its own kernels inside the same model.
They were portable, so a model ending in a classifier's top-5, a `torch.max(logits, 1)`
or a mixture-of-experts router's topk needed torch at run time for its last step.

What they promise of ties is torch's: max.dim and min.dim give the first extreme's index
(ARG_MAX/MIN do too); topk and sort (unstable) give equal values in no promised order.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..lowering import FLOAT, IsConst, aten, lowering, meta, shape
from ..schema import tfl
from .reduce import reduce_value

_EXTREMES = {aten.max.dim: ("REDUCE_MAX", "ARG_MAX", "ArgMaxOptions"),
             aten.min.dim: ("REDUCE_MIN", "ARG_MIN", "ArgMinOptions")}


def _dim_keepdim(node: Node) -> tuple[int, bool]:
    rank = len(shape(node.args[0]))
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return layout.normalize_dim(dim, rank), bool(keepdim)


# float32 values in, float32 values and int64 indices out
_DTYPES = FLOAT | {torch.int64}


def _check_ordered(node: Node, is_const: IsConst) -> str | None:
    if meta(node.args[0]).dtype != torch.float32:
        return f"{meta(node.args[0]).dtype} input (float32 only)"
    if not shape(node.args[0]):
        return "a 0-d input (no axis to order along)"
    return None


@lowering(*_EXTREMES, writes=lambda node, is_const: frozenset(_EXTREMES[node.target][:2]), dtypes=_DTYPES,
          check=_check_ordered)
def extreme(em: Emitter, node: Node) -> tuple[Value, Value]:
    """(values, indices) of the maximum (minimum) along dim: the reduction and its arg."""
    reducer, arg, options = _EXTREMES[node.target]
    v = em.to_identity(em.value(node.args[0]))
    dim, keepdim = _dim_keepdim(node)
    values = reduce_value(em, f"{node.name}/values", reducer, v, [dim], keepdim)
    reduced = tuple(s for d, s in enumerate(v.shape) if d != dim)
    indices = em.new(reduced, torch.int64, f"{node.name}/indices")  # int64 values are int32 inside the model
    em.op(arg, [v.tensor, em.int_const([dim], "axis")], [indices],
          Options(options, {"OutputType": tfl().TensorType.INT32}))
    if keepdim:
        indices = em.reshape(indices, meta(node)[1].shape, f"{node.name}/indices")
    return values, indices


def _topk_args(node: Node) -> tuple[int, int, bool, bool]:
    """(k, dim, largest, sorted) of a topk."""
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = args[2] if args[2] is not None else node.kwargs.get("dim", -1)
    largest = args[3] if args[3] is not None else node.kwargs.get("largest", True)
    ordered = args[4] if args[4] is not None else node.kwargs.get("sorted", True)
    return int(args[1]), layout.normalize_dim(dim, len(shape(node.args[0]))), bool(largest), bool(ordered)


def _check_topk(node: Node, is_const: IsConst) -> str | None:
    if not isinstance(node.args[1], int):
        return "k is not a number known at export"
    if not _topk_args(node)[3]:
        return "sorted=False (torch returns the k values in an order of its own; TOPK_V2 sorts them)"
    return _check_ordered(node, is_const)


@lowering(aten.topk.default, writes=frozenset({"TOPK_V2", "MUL"}), dtypes=_DTYPES, check=_check_topk)
def topk(em: Emitter, node: Node) -> tuple[Value, Value]:
    k, dim, largest, _ = _topk_args(node)
    return _top(em, node, k, dim, largest)


def _sort_args(node: Node) -> tuple[int, bool]:
    """(dim, descending) of a sort."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", -1)
    descending = node.args[2] if len(node.args) > 2 else node.kwargs.get("descending", False)
    return layout.normalize_dim(dim, len(shape(node.args[0]))), bool(descending)


@lowering(aten.sort.default, writes=frozenset({"TOPK_V2", "MUL"}), dtypes=_DTYPES, check=_check_ordered)
def sort(em: Emitter, node: Node) -> tuple[Value, Value]:
    """All values along dim in order: the top n of n (unstable, as torch's default sort)."""
    dim, descending = _sort_args(node)
    return _top(em, node, shape(node.args[0])[dim], dim, descending)


def _top(em: Emitter, node: Node, k: int, dim: int, largest: bool) -> tuple[Value, Value]:
    """The k largest (smallest) values along logical ``dim`` and their indices, largest
    (smallest) first: TOPK_V2 on a layout whose last axis is ``dim``. The smallest are the
    largest of -x (negating a float is exact), negated back."""
    v = em.value(node.args[0])
    rank = len(v.shape)
    perm = tuple(d for d in range(rank) if d != dim) + (dim,)
    v = em.to_perm(v, perm)
    if not largest:
        v = _negated(em, v, f"{node.name}/negated")
    out_shape = tuple(k if d == dim else s for d, s in enumerate(v.shape))
    values = em.new(out_shape, v.dtype, f"{node.name}/values", perm)
    indices = em.new(out_shape, torch.int64, f"{node.name}/indices", perm)  # int32 inside the model
    em.op("TOPK_V2", [v.tensor, em.int_const(k, "k")], [values, indices])
    if not largest:
        values = _negated(em, values, f"{node.name}/values")
    return values, indices


def _negated(em: Emitter, v: Value, name: str) -> Value:
    return em.elementwise("MUL", [v, -1.0], v.shape, v.dtype, name)
