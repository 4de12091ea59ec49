"""Elementwise math beyond one TFLite op each: logarithms in other bases, log1p, rounding
to decimals, truncation, division with a rounding mode and clamps with tensor bounds.

Each is written so that it gives torch's answer, not just a close one: floor division
is TFLite's FLOOR_DIV, which divides in double precision and so floors the exact
quotient as torch does (floor(a / b) in float32 is off by one when the quotient rounds
up to an integer: 1 // 0.1 is 9, not 10), guarded where a float divisor may be 0 (the
call would fail; torch gives inf or nan); log1p keeps its accuracy near zero.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from ..emitter import Emitter, Value
from ..lowering import FLOAT, NUMERIC, IsConst, aten, lowering, meta
from .elementwise import emit_elementwise, unary

_F32 = torch.float32


def _same(em: Emitter, op: str, x: Value, out_name: str) -> Value:
    """The unary TFLite `op` on float `x`, in x's layout."""
    out = em.new(x.shape, x.dtype, out_name, x.perm)
    em.op(op, [x.tensor], [out])
    return out


# -- logarithms -----------------------------------------------------------------------------

_LOG_SCALE = {aten.log2.default: 1.0 / math.log(2.0), aten.log10.default: 1.0 / math.log(10.0)}


@lowering(*_LOG_SCALE, writes=frozenset({"LOG", "MUL"}), dtypes=FLOAT)
def log_base(em: Emitter, node: Node) -> Value:
    """log2(x) and log10(x) as LOG(x) * (1 / ln base)."""
    x = em.value(node.args[0])
    ln = _same(em, "LOG", x, node.name + "/ln")
    return emit_elementwise(em, node, "MUL", [ln, _LOG_SCALE[node.target]], _F32)


@lowering(aten.log1p.default, writes=frozenset({"ADD", "SUB", "LOG", "MUL", "DIV", "EQUAL", "SELECT_V2"}),
          dtypes=FLOAT)
def log1p(em: Emitter, node: Node) -> Value:
    """log(1 + x), accurate near 0: with u = 1 + x rounded, log(u) * x / (u - 1), or x
    itself where u rounds to 1 (Goldberg's method; LOG(1 + x) alone returns 0 for |x| <
    6e-8 and loses digits well beyond)."""
    x = em.value(node.args[0])
    shape, name = x.shape, node.name
    u = em.elementwise("ADD", [x, 1.0], shape, _F32, name + "/u")
    d = em.elementwise("SUB", [u, 1.0], shape, _F32, name + "/u_minus_1")
    ln = _same(em, "LOG", u, name + "/ln_u")
    scaled = em.elementwise("MUL", [ln, x], shape, _F32, name + "/ln_u_x")
    ratio = em.elementwise("DIV", [scaled, d], shape, _F32, name + "/ratio")
    tiny = em.elementwise("EQUAL", [d, 0.0], shape, torch.bool, name + "/tiny", _F32)
    return emit_elementwise(em, node, "SELECT_V2", [tiny, x, ratio], [torch.bool, _F32, _F32])


# -- rounding -------------------------------------------------------------------------------


def trunc_value(em: Emitter, x: Value, name: str) -> Value:
    """Round toward zero: CEIL below zero, FLOOR elsewhere (NaN and infinities pass)."""
    negative = em.elementwise("LESS", [x, 0.0], x.shape, torch.bool, name + "/negative", _F32)
    up = _same(em, "CEIL", x, name + "/ceil")
    down = _same(em, "FLOOR", x, name + "/floor")
    return em.elementwise("SELECT_V2", [negative, up, down], x.shape, _F32, name, [torch.bool, _F32, _F32])


@lowering(aten.trunc.default, writes=frozenset({"LESS", "CEIL", "FLOOR", "SELECT_V2"}), dtypes=FLOAT)
def trunc(em: Emitter, node: Node) -> Value:
    return trunc_value(em, em.value(node.args[0]), node.name)


def _decimals(node: Node) -> int:
    return int(node.kwargs.get("decimals", node.args[1] if len(node.args) > 1 else 0))


@lowering(aten.round.decimals, writes=frozenset({"MUL", "ROUND", "DIV"}), dtypes=FLOAT)
def round_decimals(em: Emitter, node: Node) -> Value:
    """round(x * 10^d) / 10^d, as torch computes it (half to even, like ROUND). A
    negative d divides first and multiplies after."""
    d = _decimals(node)
    x = em.value(node.args[0])
    if d == 0:
        return unary(em, node, "ROUND")
    scale = float(10 ** abs(d))
    first, last = ("MUL", "DIV") if d > 0 else ("DIV", "MUL")
    scaled = em.elementwise(first, [x, scale], x.shape, _F32, node.name + "/scaled")
    rounded = _same(em, "ROUND", scaled, node.name + "/rounded")
    return emit_elementwise(em, node, last, [rounded, scale], _F32)


# -- division with a rounding mode ----------------------------------------------------------

_DIV_MODE = (aten.div.Tensor_mode, aten.div.Scalar_mode)


def _rounding_mode(node: Node) -> str | None:
    return node.kwargs.get("rounding_mode", node.args[2] if len(node.args) > 2 else None)


def _check_div_mode(node: Node, is_const: IsConst) -> str | None:
    mode = _rounding_mode(node)
    if mode not in (None, "floor", "trunc"):
        return f"rounding_mode {mode!r}"
    if meta(node).dtype not in (torch.float32, torch.int32, torch.int64):
        return f"division in {meta(node).dtype}"
    return None


def _div_mode_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    mode, integer = _rounding_mode(node), meta(node).dtype != _F32
    if mode == "floor":
        return frozenset({"FLOOR_DIV"} if integer else {"FLOOR_DIV", "EQUAL", "SELECT_V2", "DIV"})
    if mode == "trunc" and not integer:
        return frozenset({"DIV", "LESS", "CEIL", "FLOOR", "SELECT_V2"})
    return frozenset({"DIV"})


@lowering(*_DIV_MODE, writes=_div_mode_writes, dtypes=NUMERIC, check=_check_div_mode)
def div_mode(em: Emitter, node: Node) -> Value:
    """torch.div with rounding_mode: "floor" is FLOOR_DIV (exact, as the module docstring
    says; an integer zero divisor fails the call as torch raises); "trunc" is a DIV,
    truncated for floats (DIV of int32 already truncates)."""
    dtype, mode = meta(node).dtype, _rounding_mode(node)
    a, b = em.arg(node.args[0]), em.arg(node.args[1])
    if mode == "floor" and (dtype != _F32 or _nonzero_constant(b)):
        return emit_elementwise(em, node, "FLOOR_DIV", [a, b], dtype)
    if mode == "floor":
        return _float_floor_div(em, node, a, b)
    if mode is None or dtype != _F32:
        return emit_elementwise(em, node, "DIV", [a, b], dtype)
    quotient = em.elementwise("DIV", [a, b], meta(node).shape, _F32, node.name + "/quotient")
    return trunc_value(em, quotient, node.name)


def _nonzero_constant(b: object) -> bool:
    if isinstance(b, torch.Tensor):
        return bool((b != 0).all())
    return isinstance(b, (int, float)) and b != 0


def _float_floor_div(em: Emitter, node: Node, a: object, b: object) -> Value:
    """FLOOR_DIV where the divisor is not 0, a / b (inf or nan, as torch gives) where it
    is: TFLite's float FLOOR_DIV fails the whole call on a zero divisor."""
    shape, name = tuple(meta(node).shape), node.name
    divisor = em.value(b)
    zero = em.elementwise("EQUAL", [divisor, 0.0], divisor.shape, torch.bool, name + "/zero", _F32)
    safe = em.elementwise("SELECT_V2", [zero, 1.0, divisor], divisor.shape, _F32, name + "/safe",
                          [torch.bool, _F32, _F32])
    floored = em.elementwise("FLOOR_DIV", [a, safe], shape, _F32, name + "/floored")
    quotient = em.elementwise("DIV", [a, divisor], shape, _F32, name + "/quotient")
    return emit_elementwise(em, node, "SELECT_V2", [zero, quotient, floored], [torch.bool, _F32, _F32])


# -- clamps with tensor bounds --------------------------------------------------------------

_CLAMP_TENSOR = (aten.clamp.Tensor, aten.clamp_min.Tensor, aten.clamp_max.Tensor)


def _tensor_bounds(node: Node) -> tuple[object, object]:
    """(min, max) arguments of a clamp with tensor bounds; None where absent."""
    if node.target == aten.clamp_min.Tensor:
        return node.args[1], None
    if node.target == aten.clamp_max.Tensor:
        return None, node.args[1]
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    return lo, hi


def _clamp_tensor_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    lo, hi = _tensor_bounds(node)
    return frozenset(op for op, bound in (("MAXIMUM", lo), ("MINIMUM", hi)) if bound is not None)


@lowering(*_CLAMP_TENSOR, writes=_clamp_tensor_writes, dtypes=NUMERIC)
def clamp_tensor(em: Emitter, node: Node) -> Value:
    """min(hi, max(lo, x)) elementwise, broadcasting, as torch.clamp with tensors does
    (where lo > hi, the result is hi). x is the second operand: LiteRT's MAXIMUM and
    MINIMUM give the second where one is NaN (elementwise.minmax), and torch's clamp of a
    NaN is NaN."""
    lo, hi = _tensor_bounds(node)
    dtype, shape = meta(node).dtype, tuple(meta(node).shape)
    value = em.arg(node.args[0])
    if lo is not None:
        last = hi is None
        value = em.elementwise("MAXIMUM", [em.arg(lo), value], shape, dtype, node.name if last else node.name + "/max")
    if hi is not None:
        value = em.elementwise("MINIMUM", [em.arg(hi), value], shape, dtype, node.name)
    return value if isinstance(value, Value) else em.value(value)
