"""Elementwise ops: arithmetic, comparisons, selection, activations, math functions.

All of them keep whatever layout their input arrives in (NHWC stays NHWC); binary
ops broadcast in that layout, constants being permuted at compile time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node

from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..lowering import ANY, FLOAT, NUMERIC, IsConst, aten, by_target, lowering, meta
from .shape import broadcast_value, broadcast_writes

# -- helpers ------------------------------------------------------------------------------


def _probe(a: Any) -> Any:
    """Something torch.result_type accepts that has a node argument's dtype and dimness."""
    val = meta(a)
    if isinstance(val, torch.Tensor):
        return torch.empty((1,) * val.dim() if val.dim() else (), dtype=val.dtype)
    return a


def compute_dtype(a: Any, b: Any) -> torch.dtype:
    """The dtype torch compares `a` and `b` in (their promoted dtype)."""
    return torch.result_type(_probe(a), _probe(b))


def emit_elementwise(
    em: Emitter,
    node: Node,
    name: str,
    args: list[Any],
    dtypes: torch.dtype | list[torch.dtype],
    options: Options | None = None,
) -> Value:
    """Write one broadcasting TFLite op over already-resolved `args` as `node`'s value."""
    val = meta(node)
    return em.elementwise(name, args, val.shape, val.dtype, node.name, dtypes, options)


def _fused(table: str, em: Emitter, node: Node) -> Options:
    return Options(table, {"FusedActivationFunction": em.activation(node)})


# -- binary arithmetic --------------------------------------------------------------------

_ARITH = {
    aten.add.Tensor: ("ADD", "AddOptions"),
    aten.add.Scalar: ("ADD", "AddOptions"),
    aten.sub.Tensor: ("SUB", "SubOptions"),
    aten.sub.Scalar: ("SUB", "SubOptions"),
    aten.mul.Tensor: ("MUL", "MulOptions"),
    aten.mul.Scalar: ("MUL", "MulOptions"),
    aten.div.Tensor: ("DIV", "DivOptions"),
    aten.div.Scalar: ("DIV", "DivOptions"),
}


def _check_arith(node: Node, is_const: IsConst) -> str | None:
    if node.kwargs.get("alpha", 1) != 1 and isinstance(node.args[1], Node) and not is_const(node.args[1]):
        return "alpha != 1 with a runtime operand"
    if node.target in (aten.div.Tensor, aten.div.Scalar) and meta(node).dtype != torch.float32:
        return "integer division"
    return None


@lowering(*_ARITH, writes=by_target({op: name for op, (name, _) in _ARITH.items()}), dtypes=NUMERIC,
          check=_check_arith, fuses_activation=True)
def arith(em: Emitter, node: Node) -> Value:
    name, table = _ARITH[node.target]
    a, b = em.arg(node.args[0]), em.arg(node.args[1])
    alpha = node.kwargs.get("alpha", 1)
    if alpha != 1:
        b = b * alpha  # a constant operand (checked)
    dtype = meta(node).dtype
    options = _fused(table, em, node) if dtype == torch.float32 else None
    return emit_elementwise(em, node, name, [a, b], dtype, options)


_MINMAX = {aten.maximum.default: "MAXIMUM", aten.minimum.default: "MINIMUM"}


@lowering(*_MINMAX, writes=by_target(_MINMAX), dtypes=NUMERIC)
def minmax(em: Emitter, node: Node) -> Value:
    """A constant operand goes first. Where one operand is NaN, LiteRT's MAXIMUM and
    MINIMUM give the second (measured, XNNPACK and LiteRT's kernels: `minimum(x, c)` of a
    NaN x gave c), torch gives NaN; second, a runtime operand's NaN carries on. Of two
    runtime operands, a NaN in the first is lost: getting it would take two more ops per
    call (a NOT_EQUAL and a SELECT) for every model."""
    a, b = (em.arg(x) for x in node.args)
    if isinstance(a, Value) and not isinstance(b, Value):
        a, b = b, a
    return emit_elementwise(em, node, _MINMAX[node.target], [a, b], meta(node).dtype)


@lowering(aten.pow.Tensor_Tensor, writes=frozenset({"POW"}), dtypes=FLOAT)
def pow_tensor(em: Emitter, node: Node) -> Value:
    args = [em.arg(a) for a in node.args]
    return emit_elementwise(em, node, "POW", args, torch.float32)


# -- comparisons, logic, selection --------------------------------------------------------

_COMPARE = {
    **dict.fromkeys((aten.eq.Tensor, aten.eq.Scalar), "EQUAL"),
    **dict.fromkeys((aten.ne.Tensor, aten.ne.Scalar), "NOT_EQUAL"),
    **dict.fromkeys((aten.lt.Tensor, aten.lt.Scalar), "LESS"),
    **dict.fromkeys((aten.le.Tensor, aten.le.Scalar), "LESS_EQUAL"),
    **dict.fromkeys((aten.gt.Tensor, aten.gt.Scalar), "GREATER"),
    **dict.fromkeys((aten.ge.Tensor, aten.ge.Scalar), "GREATER_EQUAL"),
}


@lowering(*_COMPARE, writes=by_target(_COMPARE), dtypes=NUMERIC | {torch.bool})
def compare(em: Emitter, node: Node) -> Value:
    dtype = compute_dtype(*node.args)
    args = [em.arg(a) for a in node.args]
    return emit_elementwise(em, node, _COMPARE[node.target], args, dtype)


_LOGIC = {
    aten.logical_and.default: "LOGICAL_AND",
    aten.logical_or.default: "LOGICAL_OR",
    aten.bitwise_and.Tensor: "LOGICAL_AND",  # on bool tensors (the dtype check), `&`
    aten.bitwise_or.Tensor: "LOGICAL_OR",
}


# The constant operand that leaves the other one as it is: x & True, x | False.
_NEUTRAL = {"LOGICAL_AND": True, "LOGICAL_OR": False}

# A logical op on 0/1 float values: AND is their product, OR their maximum. Written so,
# between CASTs, because LiteRT's MediaTek plugin legalizes no LOGICAL_* op but does
# legalize CAST (as NEURON_CAST), MUL and MAXIMUM (`create_model.cc`); exact for 0/1.
_ARITHMETIC = {"LOGICAL_AND": "MUL", "LOGICAL_OR": "MAXIMUM"}


def _passed_through(node: Node, constant: Any) -> Node | None:
    """The operand a logical op returns unchanged (only broadcast), the other being a
    constant all of `_NEUTRAL` (transformers ANDs a padding mask with an all-true one),
    or None. `constant`: an `IsConst` with `.value`, or the emitter's `constant`."""
    value = getattr(constant, "value", constant)
    if not callable(value):
        return None
    neutral = _NEUTRAL[_LOGIC[node.target]]
    a, b = node.args[:2]
    for fixed, other in ((a, b), (b, a)):
        t = value(fixed) if isinstance(fixed, Node) else None
        if isinstance(t, torch.Tensor) and isinstance(other, Node) and bool((t == neutral).all()):
            return other
    return None


def _logic_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    other = _passed_through(node, is_const)
    if other is not None:
        return broadcast_writes(tuple(meta(other).shape), tuple(meta(node).shape))
    return frozenset({_ARITHMETIC[_LOGIC[node.target]]})


@lowering(*_LOGIC, writes=_logic_writes, dtypes=frozenset({torch.bool}))
def logic(em: Emitter, node: Node) -> Value:
    """`&` / `|` of booleans with no boolean op (LiteRT's MediaTek plugin legalizes
    none): with a neutral constant operand, the other operand broadcast; else the
    operands as float 0/1 (constants converted at compile time), their MUL (AND) or
    MAXIMUM (OR), and a CAST back to bool."""
    other = _passed_through(node, em.constant)
    if other is not None:
        return broadcast_value(em, em.value(other), tuple(meta(node).shape), node.name)
    args = [em.arg(a) for a in node.args[:2]]
    op = _ARITHMETIC[_LOGIC[node.target]]
    val = meta(node)
    ones = em.elementwise(op, args, val.shape, torch.float32, node.name + "/as_float")
    return em.cast(ones, torch.bool)


@lowering(aten.logical_not.default, aten.bitwise_not.default, writes=frozenset({"LOGICAL_NOT"}),
          dtypes=frozenset({torch.bool}))
def logical_not(em: Emitter, node: Node) -> Value:
    return unary(em, node, "LOGICAL_NOT")


@lowering(aten.where.self, writes=frozenset({"SELECT_V2"}), dtypes=ANY)
def where(em: Emitter, node: Node) -> Value:
    cond, a, b = (em.arg(x) for x in node.args)
    dtype = meta(node).dtype
    return emit_elementwise(em, node, "SELECT_V2", [cond, a, b], [torch.bool, dtype, dtype])


# -- unary --------------------------------------------------------------------------------


def unary(em: Emitter, node: Node, name: str, options: Options | None = None) -> Value:
    v = em.value(node.args[0], meta(node).dtype if meta(node).dtype != torch.bool else None)
    out = em.out(node, v.perm)
    em.op(name, [v.tensor], [out], options)
    return out


_UNARY = {
    aten.sigmoid.default: "LOGISTIC",
    aten.tanh.default: "TANH",
    aten.exp.default: "EXP",
    aten.log.default: "LOG",
    aten.sqrt.default: "SQRT",
    aten.rsqrt.default: "RSQRT",
    aten.abs.default: "ABS",
    aten.cos.default: "COS",
    aten.sin.default: "SIN",
    aten.floor.default: "FLOOR",
    aten.ceil.default: "CEIL",
    aten.round.default: "ROUND",
    aten.hardswish.default: "HARD_SWISH",
}


@lowering(*_UNARY, writes=by_target(_UNARY), dtypes=FLOAT)
def unary_math(em: Emitter, node: Node) -> Value:
    return unary(em, node, _UNARY[node.target])


@lowering(aten.neg.default, writes=frozenset({"MUL"}), dtypes=FLOAT)
def neg(em: Emitter, node: Node) -> Value:
    """-x as x * -1 (exact): MUL is more widely delegated than NEG (MediaTek's plugin
    legalizes MUL, not NEG)."""
    return emit_elementwise(em, node, "MUL", [em.value(node.args[0]), -1.0], torch.float32)


@lowering(aten.isnan.default, writes=frozenset({"NOT_EQUAL"}), dtypes=FLOAT | {torch.bool})
def isnan(em: Emitter, node: Node) -> Value:
    """x != x: true of NaN alone."""
    x = em.value(node.args[0])
    return emit_elementwise(em, node, "NOT_EQUAL", [x, x], torch.float32)


@lowering(aten.sign.default, writes=frozenset({"SIGN", "NOT_EQUAL", "SELECT_V2"}), dtypes=FLOAT)
def sign(em: Emitter, node: Node) -> Value:
    """SIGN, with 0 where x != x: LiteRT's SIGN gives NaN for a NaN, torch's sign 0
    (measured 2026-11-29: both give +0 for -0.0, ±1 for ±inf and for subnormals). SIGN
    is LiteRT's own kernel (XNNPACK has none)."""
    x = em.value(node.args[0])
    nan = em.elementwise("NOT_EQUAL", [x, x], x.shape, torch.bool, node.name + "/nan", torch.float32)
    signs = em.elementwise("SIGN", [x], x.shape, torch.float32, node.name + "/sign")
    return emit_elementwise(em, node, "SELECT_V2", [nan, 0.0, signs], [torch.bool, torch.float32, torch.float32])


def _relu_activation(node: Node) -> str:
    return "RELU"


@lowering(aten.relu.default, writes=frozenset({"RELU"}), dtypes=FLOAT, as_activation=_relu_activation)
def relu(em: Emitter, node: Node) -> Value:
    return unary(em, node, "RELU")


def gelu_options(node: Node) -> Options:
    """GELU's options: erf, or its tanh approximation."""
    approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    return Options("GeluOptions", {"Approximate": approximate == "tanh"})


@lowering(aten.gelu.default, writes=frozenset({"GELU"}), dtypes=FLOAT)
def gelu(em: Emitter, node: Node) -> Value:
    return unary(em, node, "GELU", gelu_options(node))


# Abramowitz & Stegun, Handbook of Mathematical Functions (1964), 7.1.26, after Hastings:
# erf(x) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-x^2), t = 1 / (1 + p x), x >= 0,
# |error| <= 1.5e-7.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # a1 .. a5


@lowering(aten.erf.default, writes=frozenset({"ABS", "MUL", "ADD", "DIV", "EXP", "SUB", "SIGN"}), dtypes=FLOAT)
def erf(em: Emitter, node: Node) -> Value:
    """erf as A&S 7.1.26 on |x|, times sign(x): TFLite has no ERF (ESM's and transformers'
    `gelu_python` write GELU as `x * 0.5 * (1 + erf(x / sqrt(2)))`, which stayed portable).
    Measured against torch's float64 erf over [-8, 8] (2026-11-29): an absolute error of
    at most 4.1e-7 (the formula's 1.5e-7 and float32's rounding), so a relative one of up
    to about 4e-7 / |erf(x)| near 0, where 1 - a product near 1 rounds (5e-5 at x = 1e-3;
    torch's own is an ulp); the GELU written with it is 1.3e-7 off F.gelu relative to its
    largest value. 22 ops, all XNNPACK's but SIGN. NaN stays NaN (SIGN of NaN), an
    infinity gives ±1, -0.0 gives 0."""
    x = em.value(node.args[0])

    def step(op: str, args: list[Any], suffix: str) -> Value:
        return em.elementwise(op, args, x.shape, torch.float32, f"{node.name}/{suffix}")

    magnitude = step("ABS", [x], "abs")
    t = step("DIV", [1.0, step("ADD", [step("MUL", [magnitude, _ERF_P], "px"), 1.0], "1+px")], "t")
    poly: Any = _ERF_A[-1]
    for i, a in enumerate(reversed(_ERF_A[:-1])):
        poly = step("ADD", [step("MUL", [t, poly], f"t*p{i}"), a], f"p{i}")
    decay = step("EXP", [step("MUL", [step("MUL", [x, x], "x2"), -1.0], "-x2")], "exp")
    tail = step("MUL", [step("MUL", [t, poly], "tp"), decay], "tail")
    magnitude_erf = step("SUB", [1.0, tail], "erf_abs")
    return emit_elementwise(em, node, "MUL", [step("SIGN", [x], "sign"), magnitude_erf], torch.float32)


def _leaky_slope(node: Node) -> float:
    return float(node.args[1]) if len(node.args) > 1 else 0.01


@lowering(aten.leaky_relu.default, writes=frozenset({"LEAKY_RELU"}), dtypes=FLOAT)
def leaky_relu(em: Emitter, node: Node) -> Value:
    return unary(em, node, "LEAKY_RELU", Options("LeakyReluOptions", {"Alpha": _leaky_slope(node)}))


def _check_elu(node: Node, is_const: IsConst) -> str | None:
    if tuple(node.args[1:4]) not in ((), (1,), (1, 1), (1, 1, 1), (1.0, 1.0, 1.0), (1.0,), (1.0, 1.0)):
        return f"alpha/scale/input_scale {tuple(node.args[1:4])} (only 1.0 is supported)"
    return None


@lowering(aten.elu.default, writes=frozenset({"ELU"}), dtypes=FLOAT, check=_check_elu)
def elu(em: Emitter, node: Node) -> Value:
    return unary(em, node, "ELU")


@lowering(aten.hardsigmoid.default, writes=frozenset({"ADD", "MUL"}), dtypes=FLOAT)
def hardsigmoid(em: Emitter, node: Node) -> Value:
    """relu6(x + 3) / 6, as an ADD with a fused RELU6 and a MUL."""
    x = em.value(node.args[0])
    relu6 = Options("AddOptions", {"FusedActivationFunction": em.activation_code("RELU6")})
    shifted = em.elementwise("ADD", [x, 3.0], x.shape, torch.float32, node.name + "/plus3", options=relu6)
    return emit_elementwise(em, node, "MUL", [shifted, 1.0 / 6.0], torch.float32, _fused("MulOptions", em, node))


# -- clamps -------------------------------------------------------------------------------

_CLAMP_ACTIVATIONS = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, None): "RELU"}


def _bounds(node: Node) -> tuple[float | None, float | None]:
    if node.target == aten.hardtanh.default:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return float(lo), float(hi)
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def clamp_activation(node: Node) -> str | None:
    """The fused activation a clamp/hardtanh is (RELU, RELU6, RELU_N1_TO_1), if any."""
    return _CLAMP_ACTIVATIONS.get(_bounds(node))


def _check_clamp(node: Node, is_const: IsConst) -> str | None:
    lo, hi = _bounds(node)
    if lo is not None and hi is not None and lo > hi:
        return f"min {lo} > max {hi}"
    return None


def _clamp_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    """An activation op (nothing when the plan fuses it into its producer), else the
    MAXIMUM/MINIMUM of its bounds."""
    act = clamp_activation(node)
    if act is not None:
        return frozenset({act})
    lo, hi = _bounds(node)
    return frozenset(op for op, bound in (("MAXIMUM", lo), ("MINIMUM", hi)) if bound is not None)


@lowering(aten.clamp.default, aten.hardtanh.default, writes=_clamp_writes, dtypes=FLOAT, check=_check_clamp,
          as_activation=clamp_activation)
def clamp(em: Emitter, node: Node) -> Value:
    act = clamp_activation(node)
    if act is not None:
        return unary(em, node, act)
    lo, hi = _bounds(node)
    v = em.value(node.args[0])
    if lo is not None and hi is not None:
        lower = em.elementwise("MAXIMUM", [v, lo], v.shape, v.dtype, node.name + "/max")
        return emit_elementwise(em, node, "MINIMUM", [lower, hi], v.dtype)
    if lo is not None:
        return emit_elementwise(em, node, "MAXIMUM", [v, lo], v.dtype)
    if hi is not None:
        return emit_elementwise(em, node, "MINIMUM", [v, hi], v.dtype)
    return v


# -- powers -------------------------------------------------------------------------------


def _exponent(node: Node) -> float:
    return float(node.args[1])


_POW_UNARY = {0.5: "SQRT", -0.5: "RSQRT"}
_POW_WRITES = {1.0: frozenset(), 2.0: frozenset({"MUL"}), -1.0: frozenset({"DIV"}), 3.0: frozenset({"MUL"})}


def _pow_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    e = _exponent(node)
    if e in _POW_UNARY:
        return frozenset({_POW_UNARY[e]})
    return _POW_WRITES.get(e, frozenset({"POW"}))


@lowering(aten.pow.Tensor_Scalar, writes=_pow_writes, dtypes=FLOAT)
def pow_scalar(em: Emitter, node: Node) -> Value:
    """x ** e with e known: MULs, SQRT, RSQRT or a DIV when they are exact, else POW.
    (x * x rather than SQUARE: the same value, and MUL is more widely delegated.)"""
    e = _exponent(node)
    x = em.value(node.args[0])
    if e == 1.0:
        return x
    if e == 2.0:
        return emit_elementwise(em, node, "MUL", [x, x], torch.float32, _fused("MulOptions", em, node))
    if e in _POW_UNARY:
        return unary(em, node, _POW_UNARY[e])
    if e == -1.0:
        return emit_elementwise(em, node, "DIV", [1.0, x], torch.float32, _fused("DivOptions", em, node))
    if e == 3.0:
        sq = em.elementwise("MUL", [x, x], x.shape, torch.float32, node.name + "/square")
        return emit_elementwise(em, node, "MUL", [sq, x], torch.float32, _fused("MulOptions", em, node))
    return emit_elementwise(em, node, "POW", [x, e], torch.float32)


@lowering(aten.reciprocal.default, writes=frozenset({"DIV"}), dtypes=FLOAT)
def reciprocal(em: Emitter, node: Node) -> Value:
    return emit_elementwise(em, node, "DIV", [1.0, em.arg(node.args[0])], torch.float32, _fused("DivOptions", em, node))


# -- no-ops and casts ---------------------------------------------------------------------


@lowering(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default, writes=frozenset(), dtypes=ANY)
def same_value(em: Emitter, node: Node) -> Value:
    return em.value(node.args[0])


def _check_to_copy(node: Node, is_const: IsConst) -> str | None:
    device = node.kwargs.get("device")
    if device is not None and torch.device(device).type != "cpu":
        return f"copy to device {device}"
    return None


@lowering(aten._to_copy.default, writes=frozenset({"CAST"}), dtypes=ANY | frozenset({torch.int8}), check=_check_to_copy)
def to_copy(em: Emitter, node: Node) -> Value:
    return em.cast(em.value(node.args[0]), meta(node).dtype)

