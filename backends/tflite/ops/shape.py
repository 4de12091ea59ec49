"""Shape and data-movement ops: views, permutes, concat, split, slice, pad, gather (and
embedding_bag: a gather, then a reduction per bag), and edgeport's `narrow_to` (a stored value narrowed to an input's dynamic size).

`permute` writes nothing: it only changes the layout the value is known to be in.
Views keep a permuted layout when they only add or drop size-1 dims.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.fx import Node

from edgeport import BackendError
from edgeport.sized_constants import NARROW_TO

from .. import layout
from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..lowering import ANY, FLOAT, IsConst, aten, lowering, meta, shape
from ..schema import tensor_type, tfl
from .reduce import reduce_value

INT8 = frozenset({torch.int8})  # rows of an int8 table (edgeport.llm's quantized embedding)


_RESHAPES = (
    aten.view.default, aten._unsafe_view.default, aten.reshape.default,
    aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default, aten.unsqueeze.default,
)


@lowering(*_RESHAPES, writes=frozenset({"RESHAPE"}), dtypes=ANY)
def view(em: Emitter, node: Node) -> Value:
    """Any reshape to the node's shape (in place when its layout allows, see Emitter.reshape)."""
    return em.reshape(em.value(node.args[0]), meta(node).shape, node.name)


@lowering(aten.permute.default, writes=frozenset(), dtypes=ANY)
def permute(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    dims = [layout.normalize_dim(d, len(v.shape)) for d in node.args[1]]
    return Value(v.tensor, tuple(meta(node).shape), v.dtype, layout.after_permute(v.perm, dims))


@lowering(aten.t.default, aten.transpose.int, writes=frozenset(), dtypes=ANY)
def transpose(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    rank = len(v.shape)
    a, b = (0, 1) if node.target == aten.t.default else (node.args[1], node.args[2])
    dims = list(range(rank))
    if rank >= 2:
        a, b = layout.normalize_dim(a, rank), layout.normalize_dim(b, rank)
        dims[a], dims[b] = dims[b], dims[a]
    return Value(v.tensor, tuple(meta(node).shape), v.dtype, layout.after_permute(v.perm, dims))


# Up to this many copies, an expand is written as CONCATENATIONs, which XNNPACK runs;
# BROADCAST_TO would split the delegated graph in two.
_MAX_CONCAT_COPIES = 16


def _copies(source: tuple[int, ...], target: tuple[int, ...]) -> int:
    """How many copies of `source` an expand to `target` makes."""
    source = (1,) * (len(target) - len(source)) + source
    return math.prod(t for s, t in zip(source, target) if s != t)


def _expand_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    return broadcast_writes(shape(node.args[0]), shape(node))


def broadcast_writes(source: tuple[int, ...], target: tuple[int, ...]) -> frozenset[str]:
    """What `broadcast_value` writes to grow `source` to `target`."""
    copies = _copies(source, target)
    if copies == 1:
        return frozenset()
    return frozenset({"CONCATENATION" if copies <= _MAX_CONCAT_COPIES else "BROADCAST_TO"})


@lowering(aten.expand.default, writes=_expand_writes, dtypes=ANY)
def expand(em: Emitter, node: Node) -> Value:
    return broadcast_value(em, em.value(node.args[0]), tuple(meta(node).shape), node.name)


def broadcast_value(em: Emitter, v: Value, target: tuple[int, ...], name: str) -> Value:
    """`v` expanded to `target` (torch's broadcasting), its last tensor named `name`."""
    if target == v.shape:
        return v
    copies = _copies(v.shape, target)
    v = em.reshape(v, (1,) * (len(target) - len(v.shape)) + v.shape)
    grown = [d for d in range(len(target)) if v.shape[d] != target[d]]
    if copies <= _MAX_CONCAT_COPIES:
        for i, d in enumerate(grown):
            shape = tuple(target[k] if k in grown[: i + 1] else v.shape[k] for k in range(len(target)))
            out = em.new(shape, v.dtype, name if i == len(grown) - 1 else f"{name}/{i}", v.perm)
            axis = layout.inverse(v.perm)[d]
            em.op("CONCATENATION", [v.tensor] * target[d], [out], Options("ConcatenationOptions", {"Axis": axis}))
            v = out
        return v
    out = em.new(target, v.dtype, name, v.perm)
    em.op("BROADCAST_TO", [v.tensor, em.int_const(out.physical_shape)], [out])
    return out


def _check_cat(node: Node, is_const: IsConst) -> str | None:
    ranks = {len(shape(p)) for p in node.args[0] if isinstance(p, Node) and shape(p) != (0,)}
    if len(ranks) > 1:
        return "inputs of different ranks"
    return None


@lowering(aten.repeat.default, writes=frozenset({"TILE"}), dtypes=ANY)
def repeat(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    repeats = list(node.args[1])
    v = em.reshape(v, (1,) * (len(repeats) - len(v.shape)) + v.shape)
    out = em.out(node, v.perm)
    em.op("TILE", [v.tensor, em.int_const(layout.apply(v.perm, repeats), "multiples")], [out])
    return out


@lowering(aten.cat.default, writes=frozenset({"CONCATENATION"}), dtypes=ANY, check=_check_cat)
def cat(em: Emitter, node: Node) -> Value:
    out_shape = meta(node).shape
    rank = len(out_shape)
    parts = [p for p in em.arg(node.args[0]) if not (isinstance(p, torch.Tensor) and p.numel() == 0)]
    dim = layout.normalize_dim(node.args[1] if len(node.args) > 1 else 0, rank)
    tensors, perm = em.broadcast_inputs(parts, rank, meta(node).dtype)
    out = em.out(node, perm)
    if len(tensors) == 1:
        return em.reshape(Value(tensors[0], tuple(out_shape), out.dtype, perm), out_shape)
    axis = layout.inverse(perm)[dim]
    options = Options("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": em.activation(node)})
    em.op("CONCATENATION", tensors, [out], options)
    return out


def _split_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    """Nothing for one part, SPLIT for equal parts, else a SLICE per part."""
    parts = {tuple(p.shape) for p in meta(node)}
    if len(meta(node)) == 1:
        return frozenset()
    return frozenset({"SPLIT" if len(parts) == 1 else "SLICE"})


@lowering(aten.split_with_sizes.default, aten.split.Tensor, writes=_split_writes, dtypes=ANY)
def split(em: Emitter, node: Node) -> list[Value]:
    """Equal parts are one SPLIT; unequal ones a SLICE each, not a SPLIT_V: NeuroPilot's
    compiler plugin legalizes SPLIT and SLICE but not SPLIT_V (kSupportedOps), so LeViT's
    query/key/value split of unequal parts left the APU's partition per attention."""
    v = em.value(node.args[0])
    rank = len(v.shape)
    dim = layout.normalize_dim(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), rank)
    parts = [tuple(p.shape) for p in meta(node)]
    sizes = [p[dim] for p in parts]
    axis = layout.inverse(v.perm)[dim]
    outs = [em.new(p, v.dtype, f"{node.name}/{i}", v.perm) for i, p in enumerate(parts)]
    if len(outs) == 1:
        return [v]
    if len(set(sizes)) == 1:
        options = Options("SplitOptions", {"NumSplits": len(outs)})
        em.op("SPLIT", [em.int_const([axis], "axis"), v.tensor], outs, options)
        return outs
    start = 0
    for out, size in zip(outs, sizes):
        begin = [start if d == axis else 0 for d in range(rank)]
        em.op("SLICE", [v.tensor, em.int_const(begin, "begin"), em.int_const(out.physical_shape, "size")], [out])
        start += size
    return outs


def _slice_bounds(node: Node) -> tuple[int, int, int, int]:
    """(dim, start, end, step) of a slice.Tensor, normalised to the input's size."""
    in_shape = shape(node.args[0])
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = layout.normalize_dim(args[1] if args[1] is not None else node.kwargs.get("dim", 0), len(in_shape))
    size = in_shape[dim]
    start = args[2] if args[2] is not None else node.kwargs.get("start")
    end = args[3] if args[3] is not None else node.kwargs.get("end")
    step = args[4] if args[4] is not None else node.kwargs.get("step", 1)
    start, end, _ = slice(start, end, step).indices(size)
    return dim, start, max(end, start), step


_SLICES = frozenset({"SLICE", "STRIDED_SLICE"})


@lowering(aten.slice.Tensor, writes=_SLICES, dtypes=ANY)
def slice_(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    dim, start, end, step = _slice_bounds(node)
    if start == 0 and end == v.shape[dim] and step == 1:
        return v
    return _strided_slice(em, node, v, {dim: (start, end, step)}, tuple(meta(node).shape))


def _strided_slice(em: Emitter, node: Node, v: Value, cuts: dict[int, tuple[int, int, int]], out_shape: tuple) -> Value:
    """Slice logical dims `cuts` ({dim: (start, end, step)}) of `v`, in its own layout."""
    begin, end, strides = [], [], []
    for d in v.perm:
        s, e, st = cuts.get(d, (0, v.shape[d], 1))
        begin.append(s)
        end.append(e)
        strides.append(st)
    out = em.new(out_shape, v.dtype, node.name, v.perm)
    if all(st == 1 for st in strides):
        sizes = [e - s for s, e in zip(begin, end)]
        em.op("SLICE", [v.tensor, em.int_const(begin, "begin"), em.int_const(sizes, "size")], [out])
    else:
        inputs = [v.tensor, em.int_const(begin, "begin"), em.int_const(end, "end"), em.int_const(strides, "strides")]
        em.op("STRIDED_SLICE", inputs, [out], Options("StridedSliceOptions", {}))
    return out


@lowering(aten.select.int, writes=_SLICES, dtypes=ANY)
def select(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    dim = layout.normalize_dim(node.args[1], len(v.shape))
    index = node.args[2] + (v.shape[dim] if node.args[2] < 0 else 0)
    kept = v.shape[:dim] + (1,) + v.shape[dim + 1 :]
    cut = _strided_slice(em, node, v, {dim: (index, index + 1, 1)}, kept)
    return em.reshape(cut, meta(node).shape)


def _pads(node: Node) -> list[tuple[int, int]]:
    """(before, after) per logical dim of a constant_pad_nd."""
    rank = len(shape(node.args[0]))
    flat = list(node.args[1])
    pads = [(0, 0)] * rank
    for i in range(len(flat) // 2):
        pads[rank - 1 - i] = (flat[2 * i], flat[2 * i + 1])
    return pads


def _check_pad(node: Node, is_const: IsConst) -> str | None:
    if any(b < 0 or a < 0 for b, a in _pads(node)):
        return "negative padding (cropping)"
    return None


@lowering(aten.constant_pad_nd.default, writes=frozenset({"PAD", "PADV2"}), dtypes=FLOAT, check=_check_pad)
def constant_pad(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    value = float(node.args[2]) if len(node.args) > 2 else 0.0
    return pad(em, node, v, _pads(node), value)


def pad(em: Emitter, node: Node, v: Value, pads: list[tuple[int, int]], value: float) -> Value:
    """Pad logical dims of `v` by `pads` with `value`, in v's layout (PAD, or PADV2 when
    value != 0). An int8 `v` pads with the int8 that represents `value`: PAD fills with
    its zero point, which represents 0."""
    physical = [pads[d] for d in v.perm]
    out_shape = tuple(s + b + a for s, (b, a) in zip(v.shape, pads))
    out = em.new(out_shape, v.dtype, node.name + "/pad", v.perm, v.quant)
    paddings = em.int_const(physical, "paddings")
    if value == 0.0:
        em.op("PAD", [v.tensor, paddings], [out])
    elif v.quant is not None:
        fill = np.array([v.quant.quantize(value)], dtype=np.int8)
        constant = em.builder.tensor((1,), tensor_type(torch.int8), node.name + "/pad_value", fill, v.quant.tflite())
        em.op("PADV2", [v.tensor, paddings, constant], [out])
    else:
        em.op("PADV2", [v.tensor, paddings, em.const(torch.tensor([value], dtype=v.dtype))], [out])
    return out


# -- gathers ------------------------------------------------------------------------------


@lowering(aten.embedding.default, writes=frozenset({"GATHER"}), dtypes=ANY | INT8)
def embedding(em: Emitter, node: Node) -> Value:
    weight = em.value(node.args[0])
    indices = em.to_identity(em.value(node.args[1]))
    out = em.out(node)
    em.op("GATHER", [em.to_identity(weight).tensor, indices.tensor], [out], Options("GatherOptions", {"Axis": 0}))
    return out


def _check_index_select(node: Node, is_const: IsConst) -> str | None:
    return None if shape(node.args[0]) else "a 0-d input (GATHER takes an axis of a tensor of rank 1 or more)"


@lowering(aten.index_select.default, writes=frozenset({"GATHER"}), dtypes=ANY, check=_check_index_select)
def index_select(em: Emitter, node: Node) -> Value:
    v = em.value(node.args[0])
    dim = layout.normalize_dim(node.args[1], len(v.shape))
    indices = em.value(node.args[2])
    axis = layout.inverse(v.perm)[dim]
    out = em.out(node, v.perm)
    em.op("GATHER", [v.tensor, indices.tensor], [out], Options("GatherOptions", {"Axis": axis}))
    return out



def _narrowed_constant(i: Any, is_const: IsConst) -> bool:
    """A stored value narrowed to an input's dynamic size (sized_constants.py)."""
    return isinstance(i, Node) and i.target == NARROW_TO and is_const(i.args[0])


_BAGS = (aten._embedding_bag_forward_only.default, aten._embedding_bag.default)
_BAG_REDUCERS = {0: "SUM", 1: "MEAN", 2: "REDUCE_MAX"}  # embedding_bag's mode: sum, mean, max
_BAG_ARGS = ("weight", "indices", "offsets", "scale_grad_by_freq", "mode", "sparse", "per_sample_weights",
             "include_last_offset", "padding_idx")


def _bag_args(node: Node) -> dict[str, Any]:
    return {**dict(zip(_BAG_ARGS, node.args)), **node.kwargs}


def _bag_size(node: Node, is_const: IsConst) -> int | None:
    """The one size of every bag (None: bags of different sizes, or offsets computed at run time)."""
    a = _bag_args(node)
    value = _offsets(a["offsets"], is_const)
    if value is None or value.dim() != 1 or value.numel() == 0:
        return None
    ends = value.tolist()[1:] + ([] if a.get("include_last_offset") else [shape(a["indices"])[0]])
    starts = value.tolist()[: len(ends)]
    sizes = {e - s for s, e in zip(starts, ends)}
    return sizes.pop() if len(sizes) == 1 and value.tolist()[0] == 0 else None


_SAME_VALUE = (aten.lift_fresh_copy.default, aten.clone.default, aten.alias.default)


def _offsets(offsets: Any, is_const: IsConst) -> torch.Tensor | None:
    """The bags' offsets when known at compile time: a stored constant, or the
    ``arange(0, n, L)`` that a 2d input's bags have before folding."""
    if not isinstance(offsets, Node) or not is_const(offsets):
        return None
    while offsets.target in _SAME_VALUE and isinstance(offsets.args[0], Node):  # a literal tensor's copy
        offsets = offsets.args[0]
    if offsets.target == aten.arange.start_step and all(isinstance(x, int) for x in offsets.args):
        return torch.arange(*offsets.args)
    value = getattr(is_const, "value", None)
    return value(offsets) if value is not None else None


def _check_bag(node: Node, is_const: IsConst) -> str | None:
    a = _bag_args(node)
    if a.get("per_sample_weights") is not None:
        return "per_sample_weights"
    if a.get("padding_idx") not in (None, -1):
        return "padding_idx"
    if a.get("mode", 0) not in _BAG_REDUCERS:
        return f"mode {a.get('mode')}"
    size = _bag_size(node, is_const)
    if not size:
        return "bags of different or zero sizes, or offsets computed at run time (equal bags only)"
    return None


@lowering(*_BAGS, writes=lambda node, is_const: frozenset({"GATHER", _BAG_REDUCERS[_bag_args(node).get("mode", 0)]}),
          dtypes=ANY, check=_check_bag, outputs=(0,))
def embedding_bag(em: Emitter, node: Node) -> tuple[Value]:
    """Bags of one size L: GATHER the rows, then SUM, MEAN or REDUCE_MAX each group of L."""
    a = _bag_args(node)
    weight = em.to_identity(em.value(a["weight"]))
    indices = em.to_identity(em.value(a["indices"]))
    rows = em.new((indices.shape[0], weight.shape[1]), weight.dtype, node.name + "/rows")
    em.op("GATHER", [weight.tensor, indices.tensor], [rows], Options("GatherOptions", {"Axis": 0}))
    bags = meta(node)[0].shape[0]
    grouped = em.reshape(rows, (bags, indices.shape[0] // bags, weight.shape[1]), node.name + "/bags")
    return (reduce_value(em, node.name, _BAG_REDUCERS[a.get("mode", 0)], grouped, [1], False),)


def _indexed_dims(node: Node) -> tuple[int, list[Any]]:
    """(the number of full slices before the index tensors, the index tensors): x[:, :, i, j]
    is (2, [i, j]); trailing full slices are dropped (they index nothing)."""
    indices = list(node.args[1])
    while indices and indices[-1] is None:
        indices.pop()
    lead = next((d for d, i in enumerate(indices) if i is not None), len(indices))
    return lead, indices[lead:]


def _check_constant_index(node: Node, is_const: IsConst) -> str | None:
    lead, indices = _indexed_dims(node)
    if any(i is None for i in indices):
        return "an index with None (a full slice between indexed dims)"
    if not all(isinstance(i, Node) and (is_const(i) or _narrowed_constant(i, is_const)) for i in indices):
        return "indices computed at run time (only constant indices become a GATHER_ND)"
    if any(meta(i).dtype not in (torch.int64, torch.int32) for i in indices):
        return "a boolean mask index"
    return None


def _index_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    if any(_narrowed_constant(i, is_const) for i in node.args[1]):
        return frozenset({"GATHER_ND"}) | NARROW_WRITES
    return frozenset({"GATHER_ND"})


@lowering(aten.index.Tensor, writes=_index_writes, dtypes=ANY, check=_check_constant_index)
def index_constant(em: Emitter, node: Node) -> Value:
    """x[i0, i1, ..., ik-1] with constant integer index tensors on k consecutive dims, after
    any full slices (bicubic interpolation's x[:, :, rows, cols]): one GATHER_ND of x stored
    with the indexed dims first, whose [*broadcast shape, k] indices are computed here (an
    attention mask read at fixed positions, x[arange(b)[:, None], arange(t)]). An index narrowed to
    a dynamic size is computed at its largest size and the positions narrowed alike.
    Indices that only spread x's dims over the output never get here: export writes
    them as a view and an expand (core/index_views.py)."""
    lead, args = _indexed_dims(node)
    v = em.value(node.args[0])
    rank = len(v.shape)
    indexed = list(range(lead, lead + len(args)))
    v = em.to_perm(v, (*indexed, *range(lead), *range(lead + len(args), rank)))  # indexed dims first
    tables = [em.constant(i.args[0] if i.target == NARROW_TO else i) for i in args]
    indices = torch.broadcast_tensors(*tables)
    sizes = torch.tensor(v.shape[lead: lead + len(indices)])
    stacked = torch.stack(indices, dim=-1).to(torch.int64)
    narrowed = [i for i in args if i.target == NARROW_TO]
    if not narrowed and ((stacked < -sizes) | (stacked >= sizes)).any():  # narrowed: checked by torch at export
        raise BackendError(f"TFLite writer: {node.name} indexes out of range of {v.shape}",
                           hint="torch raises the same error on this model: fix the indices")
    positions = torch.where(stacked < 0, stacked + sizes, stacked).to(torch.int32)
    source = Value(em.const(positions, node.name + "/indices"), tuple(positions.shape), torch.int32,
                   layout.identity(positions.dim()))
    spread = len(indices[0].shape)
    for i in narrowed:  # the index's dims, right-aligned in the broadcast shape
        shift = spread - len(meta(i).shape)
        dims = [d + shift for d in i.args[2]]
        source = _narrow(em, source, em.value(i.args[1]), dims, i.args[3], f"{node.name}/{i.name}")
    # GATHER_ND writes (*broadcast, *leading dims, *trailing dims): the output stored so
    out = em.out(node, (*range(lead, lead + spread), *range(lead), *range(lead + spread, len(meta(node).shape))))
    em.op("GATHER_ND", [v.tensor, source.tensor], [out])
    return out


# -- sizes read at run time -----------------------------------------------------------------


NARROW_WRITES = frozenset({"SHAPE", "CONCATENATION", "GATHER", "SLICE"})


@lowering(NARROW_TO, writes=NARROW_WRITES, dtypes=ANY)
def narrow_to(em: Emitter, node: Node) -> Value:
    """The leading part of a stored value as long as an input's dims (`_narrow`)."""
    table = em.to_identity(em.value(node.args[0]))
    return _narrow(em, table, em.value(node.args[1]), node.args[2], node.args[3], node.name)


def _narrow(em: Emitter, table: Value, like: Value, dims: list[int], like_dims: list[int], name: str) -> Value:
    """`table` (identity layout) narrowed so that dim ``dims[i]`` is as long as ``like``'s
    dim ``like_dims[i]``: SHAPE of `like`, picked into a SLICE size (-1, "to the end",
    for the dims kept whole). Nothing in it depends on the size, so the model resizes
    with the input (dynamic.py)."""
    rank, like_rank = len(table.shape), len(like.shape)
    sizes = em.new((like_rank,), torch.int32, name + "/shape")
    em.op("SHAPE", [like.tensor], [sizes], Options("ShapeOptions", {"OutType": tfl().TensorType.INT32}))
    with_whole = em.new((like_rank + 1,), torch.int32, name + "/sizes")
    em.op("CONCATENATION", [sizes.tensor, em.int_const([-1], "whole")], [with_whole],
          Options("ConcatenationOptions", {"Axis": 0}))
    physical = [layout.inverse(like.perm)[d] for d in like_dims]  # the input's dims as stored
    pick = [physical[list(dims).index(d)] if d in dims else like_rank for d in range(rank)]
    size = em.new((rank,), torch.int32, name + "/size")
    em.op("GATHER", [with_whole.tensor, em.int_const(pick, "pick")], [size], Options("GatherOptions", {"Axis": 0}))
    shape = tuple(like.shape[like_dims[list(dims).index(d)]] if d in dims else n for d, n in enumerate(table.shape))
    out = em.new(shape, table.dtype, name)
    em.op("SLICE", [table.tensor, em.int_const([0] * rank, "begin"), size.tensor], [out])
    return out
