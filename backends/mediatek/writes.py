"""Which TFLite builtins our writer writes for an aten node, so support can ask NeuroPilot.

LiteRT's MediaTek plugin judges TFLite ops; the partitioner asks about aten nodes. This
table bridges the two, read from backends/tflite/ops/*.py. It only has to be right
about ops the plugin refuses: `compile` checks the model actually written against the
same rules and declines, by node, whatever got past this table, so a stale entry costs
a re-partition, never a wrong artifact. (A writer-side `written_ops(node)` would let
this table go: see the mediatek issue.)
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch
from torch.fx import Node

aten = torch.ops.aten

Ops = tuple[str, ...]
IsConst = Callable[[Node], bool]

_ALWAYS: dict[Any, Ops] = {
    # convolution and pooling (PAD/PADV2 when TFLite's SAME/VALID cannot express torch's padding)
    aten.convolution.default: ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "PAD", "SLICE"),
    aten._native_batch_norm_legit_no_training.default: ("MUL", "ADD"),  # or folded into its conv
    aten.max_pool2d.default: ("MAX_POOL_2D", "PADV2"),
    aten.max_pool2d_with_indices.default: ("MAX_POOL_2D", "PADV2"),
    aten.avg_pool2d.default: ("AVERAGE_POOL_2D", "PAD"),
    aten._adaptive_avg_pool2d.default: ("AVERAGE_POOL_2D",),
    aten.upsample_nearest2d.vec: ("RESIZE_NEAREST_NEIGHBOR",),
    aten.upsample_nearest2d.default: ("RESIZE_NEAREST_NEIGHBOR",),
    aten.upsample_bilinear2d.vec: ("RESIZE_BILINEAR",),
    aten.upsample_bilinear2d.default: ("RESIZE_BILINEAR",),
    # matrix products: FULLY_CONNECTED with constant weights, else BATCH_MATMUL (+ ADD)
    aten.linear.default: ("FULLY_CONNECTED", "BATCH_MATMUL", "ADD"),
    aten.addmm.default: ("FULLY_CONNECTED", "BATCH_MATMUL", "ADD"),
    aten.mm.default: ("FULLY_CONNECTED", "BATCH_MATMUL"),
    aten.bmm.default: ("BATCH_MATMUL",),
    # elementwise
    **dict.fromkeys((aten.add.Tensor, aten.add.Scalar), ("ADD",)),
    **dict.fromkeys((aten.sub.Tensor, aten.sub.Scalar), ("SUB",)),
    **dict.fromkeys((aten.mul.Tensor, aten.mul.Scalar), ("MUL",)),
    **dict.fromkeys((aten.div.Tensor, aten.div.Scalar, aten.reciprocal.default), ("DIV",)),
    aten.maximum.default: ("MAXIMUM",),
    aten.minimum.default: ("MINIMUM",),
    aten.pow.Tensor_Tensor: ("POW",),
    **dict.fromkeys((aten.eq.Tensor, aten.eq.Scalar), ("EQUAL",)),
    **dict.fromkeys((aten.ne.Tensor, aten.ne.Scalar), ("NOT_EQUAL",)),
    **dict.fromkeys((aten.lt.Tensor, aten.lt.Scalar), ("LESS",)),
    **dict.fromkeys((aten.le.Tensor, aten.le.Scalar), ("LESS_EQUAL",)),
    **dict.fromkeys((aten.gt.Tensor, aten.gt.Scalar), ("GREATER",)),
    **dict.fromkeys((aten.ge.Tensor, aten.ge.Scalar), ("GREATER_EQUAL",)),
    **dict.fromkeys((aten.logical_and.default, aten.bitwise_and.Tensor), ("LOGICAL_AND",)),
    **dict.fromkeys((aten.logical_or.default, aten.bitwise_or.Tensor), ("LOGICAL_OR",)),
    **dict.fromkeys((aten.logical_not.default, aten.bitwise_not.default), ("LOGICAL_NOT",)),
    aten.where.self: ("SELECT_V2",),
    aten.sigmoid.default: ("LOGISTIC",),
    aten.tanh.default: ("TANH",),
    aten.exp.default: ("EXP",),
    aten.log.default: ("LOG",),
    aten.sqrt.default: ("SQRT",),
    aten.rsqrt.default: ("RSQRT",),
    aten.neg.default: ("NEG",),
    aten.abs.default: ("ABS",),
    aten.cos.default: ("COS",),
    aten.sin.default: ("SIN",),
    aten.floor.default: ("FLOOR",),
    aten.ceil.default: ("CEIL",),
    aten.round.default: ("ROUND",),
    aten.hardswish.default: ("HARD_SWISH",),
    aten.relu.default: ("RELU",),
    aten.gelu.default: ("GELU",),
    aten.leaky_relu.default: ("LEAKY_RELU",),
    aten.elu.default: ("ELU",),
    aten.hardsigmoid.default: ("ADD", "MUL"),
    **dict.fromkeys((aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default), ()),
    aten._to_copy.default: ("CAST",),
    # reductions and normalization
    **dict.fromkeys((aten.mean.dim, aten.mean.default), ("MEAN",)),
    **dict.fromkeys((aten.sum.dim_IntList, aten.sum.default), ("SUM",)),
    aten.amax.default: ("REDUCE_MAX",),
    aten.amin.default: ("REDUCE_MIN",),
    **dict.fromkeys((aten.any.dim, aten.any.dims, aten.any.default), ("REDUCE_ANY",)),
    aten._softmax.default: ("SOFTMAX",),
    aten._log_softmax.default: ("LOG_SOFTMAX",),
    aten.native_layer_norm.default: ("MEAN", "SUB", "SQUARE", "ADD", "RSQRT", "MUL"),
    aten.cumsum.default: ("CUMSUM",),
    # data movement: a permute only relabels the layout; a consumer that needs another
    # layout gets a TRANSPOSE, which the plugin takes
    **dict.fromkeys(
        (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.squeeze.dims,
         aten.squeeze.dim, aten.squeeze.default, aten.unsqueeze.default),
        ("RESHAPE",),
    ),
    **dict.fromkeys((aten.permute.default, aten.t.default, aten.transpose.int), ("TRANSPOSE",)),
    aten.cat.default: ("CONCATENATION",),
    aten.repeat.default: ("TILE",),
    aten.slice.Tensor: ("SLICE", "STRIDED_SLICE"),
    aten.select.int: ("SLICE", "STRIDED_SLICE", "RESHAPE"),
    aten.constant_pad_nd.default: ("PAD", "PADV2"),
    **dict.fromkeys((aten.embedding.default, aten.index_select.default), ("GATHER",)),
}  # fmt: skip


def _pow(node: Node, is_const: IsConst) -> Ops:
    exponent = float(node.args[1])
    special = {1.0: (), 2.0: ("SQUARE",), 0.5: ("SQRT",), -0.5: ("RSQRT",), -1.0: ("DIV",), 3.0: ("SQUARE", "MUL")}
    return special.get(exponent, ("POW",))


# backends/tflite/ops/shape.py writes an expand of up to this many copies as
# CONCATENATIONs and a larger one as BROADCAST_TO.
_MAX_CONCAT_COPIES = 16


def _expand(node: Node, is_const: IsConst) -> Ops:
    source, target = tuple(node.args[0].meta["val"].shape), tuple(node.meta["val"].shape)
    source = (1,) * (len(target) - len(source)) + source
    copies = math.prod(t for s, t in zip(source, target) if s != t)
    if copies == 1:
        return ()
    return ("CONCATENATION",) if copies <= _MAX_CONCAT_COPIES else ("BROADCAST_TO",)


def _split(node: Node, is_const: IsConst) -> Ops:
    sizes = {tuple(v.shape) for v in node.meta["val"]}
    if len(node.meta["val"]) == 1:
        return ()
    return ("SPLIT",) if len(sizes) == 1 else ("SPLIT_V",)


_CLAMP_OPS = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, None): "RELU"}


def _bounds(node: Node) -> tuple[float | None, float | None]:
    if node.target == aten.hardtanh.default:
        names, defaults = ("min_val", "max_val"), (-1.0, 1.0)
    else:
        names, defaults = ("min", "max"), (None, None)
    values = [node.args[i + 1] if len(node.args) > i + 1 else node.kwargs.get(names[i], defaults[i]) for i in (0, 1)]
    return tuple(None if v is None else float(v) for v in values)  # type: ignore[return-value]


def _clamp(node: Node, is_const: IsConst) -> Ops:
    """A clamp is a fused activation of its producer when it is that producer's only
    reader; otherwise a RELU/RELU6/RELU_N1_TO_1 op, or MAXIMUM/MINIMUM."""
    lo, hi = _bounds(node)
    act = _CLAMP_OPS.get((lo, hi))
    if act is not None:
        producer = node.args[0]
        fused = isinstance(producer, Node) and producer.op == "call_function" and len(producer.users) == 1
        return () if fused else (act,)
    return tuple(op for op, bound in (("MAXIMUM", lo), ("MINIMUM", hi)) if bound is not None)


def _sdpa(node: Node, is_const: IsConst) -> Ops:
    """Two BATCH_MATMULs around a SOFTMAX; a mask is ADDed, a runtime bool mask first
    turned additive by a SELECT_V2."""
    args = dict(zip(("query", "key", "value", "attn_mask", "dropout_p", "is_causal"), node.args))
    args.update(node.kwargs)
    mask = args.get("attn_mask")
    ops: Ops = ("MUL", "BATCH_MATMUL", "SOFTMAX")
    if isinstance(mask, Node) and mask.meta["val"].dtype == torch.bool and not is_const(mask):
        return ops + ("ADD", "SELECT_V2")
    return ops + ("ADD",) if mask is not None or args.get("is_causal", False) else ops


_DEPENDS: dict[Any, Callable[[Node, IsConst], Ops]] = {
    aten.pow.Tensor_Scalar: _pow,
    aten.expand.default: _expand,
    aten.split.Tensor: _split,
    aten.split_with_sizes.default: _split,
    aten.clamp.default: _clamp,
    aten.hardtanh.default: _clamp,
    aten.scaled_dot_product_attention.default: _sdpa,
}


def written_ops(node: Node, is_const: IsConst) -> Ops | None:
    """The TFLite builtins our writer writes for runtime node `node` (besides layout
    changes), or None for an op this table does not know."""
    if node.target is operator.getitem:
        return ()
    if node.target in _DEPENDS:
        return _DEPENDS[node.target](node, is_const)
    return _ALWAYS.get(node.target)
