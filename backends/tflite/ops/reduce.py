"""Reductions and normalisations: mean/sum/amax/amin/any, the 2-norm, softmax, log_softmax,
layer_norm, group_norm, and batch norm on its own batch's statistics (instance norm).

Reduced dims are remapped to the value's layout, so a spatial mean of an NHWC value
is a MEAN over axes (1, 2) with no transpose.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..lowering import FLOAT, NUMERIC, IsConst, aten, by_target, lowering, meta, shape

_REDUCERS = {
    aten.mean.dim: "MEAN",
    aten.mean.default: "MEAN",
    aten.sum.dim_IntList: "SUM",
    aten.sum.default: "SUM",
    aten.amax.default: "REDUCE_MAX",
    aten.amin.default: "REDUCE_MIN",
    aten.any.dim: "REDUCE_ANY",
    aten.any.dims: "REDUCE_ANY",
    aten.any.default: "REDUCE_ANY",
}


def _reduce_dims(node: Node) -> tuple[list[int], bool]:
    """(logical dims reduced, keepdim) of a reduction node."""
    rank = len(shape(node.args[0]))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if node.target in (aten.mean.default, aten.sum.default, aten.any.default) or dims is None or dims == []:
        dims = list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return sorted({layout.normalize_dim(d, rank) for d in dims}), bool(keepdim)


def _check_reduce(node: Node, is_const: IsConst) -> str | None:
    if not shape(node.args[0]):  # torch names dim 0 of a 0-d tensor; TFLite has no axis to reduce
        return "reduction of a 0-d tensor"
    if node.target in (aten.mean.dim, aten.mean.default) and meta(node).dtype != torch.float32:
        return "integer mean"
    return None


def _reducer_dtype(reducer: str, result: torch.dtype) -> torch.dtype:
    """The dtype TFLite's `reducer` computes in to give a `result` of torch's dtype.

    torch casts the input to the result dtype before reducing: sum/mean with ``dtype=``,
    the int64 sum of int32 or bool, the bool ``any`` of numbers. TFLite has no bool
    REDUCE_MAX/MIN (amax/amin of bool), so those reduce 0/1 in int32.
    """
    return torch.int32 if result == torch.bool and reducer != "REDUCE_ANY" else result


@lowering(*_REDUCERS, writes=by_target(_REDUCERS), dtypes=NUMERIC | {torch.bool}, check=_check_reduce)
def reduce(em: Emitter, node: Node) -> Value:
    reducer, result = _REDUCERS[node.target], meta(node).dtype
    v = em.value(node.args[0])
    dims, keepdim = _reduce_dims(node)
    if v.quant is not None:  # the int8 form of a quantized mean: reduced as int8, as XNNPACK's QS8 MEAN does
        return reduce_value(em, node.name, reducer, v, dims, keepdim)
    v = em.cast(v, _reducer_dtype(reducer, result))
    return em.cast(reduce_value(em, node.name, reducer, v, dims, keepdim), result)


def reduce_value(em: Emitter, out_name: str, name: str, v: Value, dims: list[int], keepdim: bool) -> Value:
    """Reduce logical `dims` of `v` with the TFLite reducer `name`, in v's layout."""
    inv = layout.inverse(v.perm)
    axes = sorted(inv[d] for d in dims)
    perm = v.perm if keepdim else layout.drop_dims(v.perm, dims)
    out_shape = tuple(1 if d in dims else s for d, s in enumerate(v.shape)) if keepdim else tuple(
        s for d, s in enumerate(v.shape) if d not in dims
    )
    out = em.new(out_shape, v.dtype, out_name, perm)
    em.op(name, [v.tensor, em.int_const(axes, "axes")], [out], Options("ReducerOptions", {"KeepDims": keepdim}))
    return out


def _vector_norm_args(node: Node) -> tuple[float, list[int], bool]:
    """(ord, logical dims, keepdim) of a linalg_vector_norm."""
    args = list(node.args) + [None] * (4 - len(node.args))
    order = args[1] if args[1] is not None else node.kwargs.get("ord", 2)
    dims = args[2] if args[2] is not None else node.kwargs.get("dim")
    keepdim = args[3] if args[3] is not None else node.kwargs.get("keepdim", False)
    rank = len(shape(node.args[0]))
    dims = list(range(rank)) if dims is None or dims == [] else [dims] if isinstance(dims, int) else dims
    return float(order), sorted({layout.normalize_dim(d, rank) for d in dims}), bool(keepdim)


def _check_vector_norm(node: Node, is_const: IsConst) -> str | None:
    if not shape(node.args[0]):
        return "reduction of a 0-d tensor"
    if node.kwargs.get("dtype") not in (None, torch.float32):
        return f"dtype {node.kwargs['dtype']}"
    order = _vector_norm_args(node)[0]
    return None if order == 2 else f"ord={order:g} (the 2-norm only: F.normalize's and torch.norm's default)"


@lowering(aten.linalg_vector_norm.default, writes=frozenset({"MUL", "SUM", "SQRT"}), dtypes=FLOAT,
          check=_check_vector_norm)
def vector_norm(em: Emitter, node: Node) -> Value:
    """sqrt(sum(x * x)) over dims (F.normalize divides by it): the square as MUL, as
    everywhere in this writer (see pow_scalar)."""
    x = em.value(node.args[0])
    _, dims, keepdim = _vector_norm_args(node)
    squared = _binary(em, node, "MUL", [x, x], "squared")
    total = reduce_value(em, node.name + "/sum", "SUM", squared, dims, keepdim)
    out = em.new(total.shape, torch.float32, node.name, total.perm)
    em.op("SQRT", [total.tensor], [out])
    return out


# -- softmax ------------------------------------------------------------------------------


def _check_softmax(node: Node, is_const: IsConst) -> str | None:
    if len(node.args) > 2 and node.args[2]:
        return "half_to_float"
    return None


_SOFTMAXES = {aten._softmax.default: "SOFTMAX", aten._log_softmax.default: "LOG_SOFTMAX"}


@lowering(*_SOFTMAXES, writes=by_target(_SOFTMAXES), dtypes=FLOAT, check=_check_softmax)
def softmax(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    dim = layout.normalize_dim(node.args[1], len(v.shape))
    log = node.target == aten._log_softmax.default
    return softmax_value(em, node.name, v, dim, log)


def softmax_value(em: Emitter, out_name: str, v: Value, dim: int, log: bool = False) -> Value:
    """(log-)softmax over logical `dim`: TFLite normalises the last stored axis, so `dim`
    is moved last when it is not already."""
    if v.perm[-1] != dim:
        v = em.to_perm(v, tuple(p for p in v.perm if p != dim) + (dim,))
    out = em.new(v.shape, v.dtype, out_name, v.perm)
    if log:
        em.op("LOG_SOFTMAX", [v.tensor], [out], Options("LogSoftmaxOptions", {}))
    else:
        em.op("SOFTMAX", [v.tensor], [out], Options("SoftmaxOptions", {"Beta": 1.0}))
    return out


# -- layer norm, group norm ----------------------------------------------------------------


@lowering(
    aten.native_layer_norm.default, writes=frozenset({"MEAN", "SUB", "MUL", "ADD", "RSQRT"}), dtypes=FLOAT, outputs=(0,)
)
def layer_norm(em: Emitter, node: Node) -> tuple[Value]:
    """(x - mean) * rsqrt(var + eps) * weight + bias over the trailing normalized dims."""
    x = em.value(node.args[0])
    normalized, weight, bias, eps = node.args[1], node.args[2], node.args[3], float(node.args[4])
    rank = len(x.shape)
    dims = list(range(rank - len(normalized), rank))
    y = _standardized(em, node, x, dims, eps, "normalized" if weight is not None or bias is not None else None)
    return (_affine(em, node, y, em.arg(weight) if weight is not None else None,
                    em.arg(bias) if bias is not None else None),)


def _check_group_norm(node: Node, is_const: IsConst) -> str | None:
    dims = shape(node.args[0])
    if len(dims) < 3:
        return f"an input of rank {len(dims)} (no spatial dims)"
    if int(node.args[6]) != dims[1] and not all(isinstance(d, int) for d in dims):
        return "groups of several channels with a dynamic dim"
    return None


@lowering(aten.native_group_norm.default, writes=frozenset({"MEAN", "SUB", "MUL", "ADD", "RSQRT"}), dtypes=FLOAT,
          outputs=(0,), check=_check_group_norm)
def group_norm(em: Emitter, node: Node) -> tuple[Value]:
    """Each group of channels standardized over its channels and spatial positions, then
    scaled and shifted per channel. One channel per group (wav2vec2's feature encoder)
    reduces the spatial dims in place; larger groups are reshaped to (N, groups, -1)
    first and back after."""
    x = em.value(node.args[0])
    weight, bias, groups, eps = node.args[1], node.args[2], int(node.args[6]), float(node.args[7])
    rank = len(x.shape)
    grouped = x.shape if groups == x.shape[1] else (x.shape[0], groups, math.prod(x.shape[1:]) // groups)
    y = em.reshape(x, grouped)
    y = _standardized(em, node, y, list(range(2, len(y.shape))), eps, "standardized")
    y = em.reshape(y, x.shape, node.name + "/ungrouped")
    return (_affine(em, node, y, _per_channel(em, weight, rank, f"{node.name}/weight"),
                    _per_channel(em, bias, rank, f"{node.name}/bias")),)


def _check_batch_statistics(node: Node, is_const: IsConst) -> str | None:
    if len(shape(node.args[0])) < 2:
        return f"an input of rank {len(shape(node.args[0]))} (no channel dim)"
    return None if node.args[3] else "training=False with no running statistics"


@lowering(aten._native_batch_norm_legit.no_stats, writes=frozenset({"MEAN", "SUB", "MUL", "ADD", "RSQRT"}),
          dtypes=FLOAT, outputs=(0,), check=_check_batch_statistics)
def batch_statistics_norm(em: Emitter, node: Node) -> tuple[Value]:
    """Each channel standardized over the batch and spatial positions it holds, then
    scaled and shifted per channel: InstanceNorm, which torch writes as this batch norm
    of the input viewed as (1, N * C, ...), with the (biased) variance of the values."""
    x = em.value(node.args[0])
    weight, bias, eps = node.args[1], node.args[2], float(node.args[5])
    rank = len(x.shape)
    affine = weight is not None or bias is not None
    y = _standardized(em, node, x, [0, *range(2, rank)], eps, "standardized" if affine else None)
    return (_affine(em, node, y, _per_channel(em, weight, rank, f"{node.name}/weight"),
                    _per_channel(em, bias, rank, f"{node.name}/bias")),)


def _per_channel(em: Emitter, arg: Node | None, rank: int, name: str) -> torch.Tensor | Value | None:
    """A (C,) weight or bias as (C, 1, ..): broadcast over a rank-`rank` value's spatial dims."""
    if arg is None:
        return None
    v = em.arg(arg)
    channels = (v.shape[0],) + (1,) * (rank - 2)
    return v.reshape(channels) if isinstance(v, torch.Tensor) else em.reshape(v, channels, name)


def _standardized(em: Emitter, node: Node, x: Value, dims: list[int], eps: float, suffix: str | None) -> Value:
    """(x - mean) * rsqrt(var + eps) over logical `dims`, written as `suffix` (None: as node)."""
    mean = reduce_value(em, node.name + "/mean", "MEAN", x, dims, keepdim=True)
    centered = _binary(em, node, "SUB", [x, mean], "centered")
    squared = _binary(em, node, "MUL", [centered, centered], "squared")  # as MUL, not SQUARE: see pow_scalar
    var = reduce_value(em, node.name + "/var", "MEAN", squared, dims, keepdim=True)
    shifted = _binary(em, node, "ADD", [var, eps], "var_eps")
    inv_std = em.new(shifted.shape, torch.float32, node.name + "/rstd", shifted.perm)
    em.op("RSQRT", [shifted.tensor], [inv_std])
    return _binary(em, node, "MUL", [centered, inv_std], suffix)


def _affine(em: Emitter, node: Node, y: Value, weight: torch.Tensor | Value | None,
            bias: torch.Tensor | Value | None) -> Value:
    """y * weight + bias (either may be None); the last op written is named after node."""
    if weight is not None:
        y = _binary(em, node, "MUL", [y, weight], "scaled" if bias is not None else None)
    if bias is not None:
        y = _binary(em, node, "ADD", [y, bias], None)
    return y


def _binary(em: Emitter, node: Node, name: str, args: list, suffix: str | None) -> Value:
    """A float32 broadcasting op inside a decomposition; `suffix` None names it after node."""
    out_name = node.name if suffix is None else f"{node.name}/{suffix}"
    return em.elementwise(name, args, args[0].shape, torch.float32, out_name)



# -- cumulative sum -----------------------------------------------------------------------


def _check_cumsum(node: Node, is_const: IsConst) -> str | None:
    if node.kwargs.get("dtype") not in (None, meta(node).dtype):
        return "accumulation dtype argument"
    return None


@lowering(aten.cumsum.default, writes=frozenset({"CUMSUM"}), dtypes=NUMERIC, check=_check_cumsum)
def cumsum(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0], meta(node).dtype)
    dim = layout.normalize_dim(node.args[1], len(v.shape))
    out = em.out(node, v.perm)
    axis = em.int_const(layout.inverse(v.perm)[dim], "axis")  # a scalar int32 tensor
    em.op("CUMSUM", [v.tensor, axis], [out], Options("CumsumOptions", {}))
    return out
