"""Matrix products: linear/addmm/mm with constant weights become FULLY_CONNECTED, products
of two runtime tensors BATCH_MATMUL (a transposed operand becomes an adj flag, not a
TRANSPOSE)."""

from __future__ import annotations

import numpy as np
import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..lowering import FLOAT, IsConst, aten, lowering, meta, shape
from .elementwise import emit_elementwise


def fully_connected(em: Emitter, node: Node, x: Value, weight: np.ndarray, bias: np.ndarray | None) -> Value:
    """y = x @ weight.T + bias over x's last logical dim; weight is (out, in)."""
    if len(x.shape) == 1:  # FULLY_CONNECTED wants a batch dim
        y = fully_connected(em, node, em.reshape(x, (1,) + x.shape), weight, bias)
        return em.reshape(y, y.shape[1:])
    rank = len(x.shape)
    if x.perm[-1] != rank - 1:
        x = em.to_perm(x, tuple(p for p in x.perm if p != rank - 1) + (rank - 1,))
    out_features = weight.shape[0]
    w = em.weight(weight, node.name + "/weight")
    b = em.weight(bias if bias is not None else np.zeros(out_features, np.float32), node.name + "/bias")
    out = em.new(x.shape[:-1] + (out_features,), torch.float32, node.name, x.perm)
    options = Options(
        "FullyConnectedOptions", {"FusedActivationFunction": em.activation(node), "KeepNumDims": rank > 2}
    )
    em.op("FULLY_CONNECTED", [x.tensor, w, b], [out], options)
    return out


def batch_matmul(em: Emitter, a: Value, b: Value, name: str, dtype: torch.dtype = torch.float32) -> Value:
    """a @ b over the last two dims; a stored with its last two dims swapped becomes adj_x."""
    a, adj_x = _matmul_operand(em, a)
    b, adj_y = _matmul_operand(em, b)
    shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    out = em.new(shape, dtype, name)
    em.op("BATCH_MATMUL", [a.tensor, b.tensor], [out], Options("BatchMatMulOptions", {"AdjX": adj_x, "AdjY": adj_y}))
    return out


def _matmul_operand(em: Emitter, v: Value) -> tuple[Value, bool]:
    rank = len(v.shape)
    swapped = layout.identity(rank - 2) + (rank - 1, rank - 2)
    if v.perm == swapped:
        return v, True
    return em.to_identity(v), False


def _const(em: Emitter, a: object) -> np.ndarray | None:
    value = em.arg(a) if isinstance(a, Node) else a
    return value.detach().float().numpy() if isinstance(value, torch.Tensor) else None


def _scalar_kw(node: Node, key: str) -> float:
    return float(node.kwargs.get(key, 1))


def _check_addmm(node: Node, is_const: IsConst) -> str | None:
    if _scalar_kw(node, "beta") != 1 or _scalar_kw(node, "alpha") != 1:
        return "alpha/beta other than 1"
    return None


# FULLY_CONNECTED with constant weights, else BATCH_MATMUL, and an ADD for a runtime bias.
_MATMUL_WRITES = frozenset({"FULLY_CONNECTED", "BATCH_MATMUL", "ADD"})


def _check_linear(node: Node, is_const: IsConst) -> str | None:
    if len(shape(node.args[0])) < 2 and not is_const(node.args[1]):  # a run-time weight takes the matmul path,
        return "a 1-d input with a run-time weight"  # which needs a row dimension
    return None


@lowering(aten.linear.default, writes=_MATMUL_WRITES, dtypes=FLOAT, check=_check_linear, fuses_activation=True)
def linear(em: Emitter, node: Node) -> Value:
    x = em.value(node.args[0])
    bias_arg = node.args[2] if len(node.args) > 2 else None
    weight = _const(em, node.args[1])
    bias = _const(em, bias_arg) if bias_arg is not None else None
    if weight is not None and (bias_arg is None or bias is not None):
        return fully_connected(em, node, x, weight, bias)
    w = em.value(node.args[1])
    wt = Value(w.tensor, w.shape[::-1], w.dtype, layout.after_permute(w.perm, (1, 0)))
    y = batch_matmul(em, x, wt, node.name if bias_arg is None else node.name + "/matmul")
    if bias_arg is None:
        return y
    return emit_elementwise(em, node, "ADD", [y, em.arg(bias_arg)], torch.float32)


@lowering(
    aten.addmm.default, aten.mm.default, writes=_MATMUL_WRITES, dtypes=FLOAT, check=_check_addmm, fuses_activation=True
)
def addmm(em: Emitter, node: Node) -> Value:
    bias_arg, x_arg, w_arg = node.args if node.target == aten.addmm.default else (None, *node.args)
    weight = _const(em, w_arg)
    bias = _const(em, bias_arg) if bias_arg is not None else None
    n = meta(node).shape[-1]
    if weight is not None and (bias_arg is None or (bias is not None and bias.size == n)):
        flat_bias = bias.reshape(n) if bias is not None else None
        return fully_connected(em, node, em.value(x_arg), np.ascontiguousarray(weight.T), flat_bias)
    y = batch_matmul(em, em.value(x_arg), em.value(w_arg), node.name if bias_arg is None else node.name + "/mm")
    if bias_arg is None:
        return y
    return emit_elementwise(em, node, "ADD", [y, em.arg(bias_arg)], torch.float32)


def _check_matmul(node: Node, is_const: IsConst) -> str | None:
    """matmul appears only where a quantizer expanded an attention (tflite/expand.py)."""
    if any(len(shape(a)) < 2 for a in node.args[:2]):
        return "a 1-d operand"
    return None


@lowering(aten.bmm.default, aten.matmul.default, writes=frozenset({"BATCH_MATMUL"}), dtypes=FLOAT, check=_check_matmul)
def bmm(em: Emitter, node: Node) -> Value:
    return batch_matmul(em, em.value(node.args[0]), em.value(node.args[1]), node.name)
