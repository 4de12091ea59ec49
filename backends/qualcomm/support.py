"""Which aten nodes the QNN HTP backend takes: a fast table, corrected by real compiles
and by comparing real outputs with torch.

Each row says what ONNX op(s) torch.onnx turns the aten op into, and the QNN execution
provider's limits on HTP. The table is a prediction; `placement.compile_verified` checks
it against QNN's own verdict at compile time. A compile proves only that QNN *takes* a
node, not that it computes it right: QNN compiled k2/s2/p1 pools, grouped 3d transposed
convolutions and more, and returned garbage. So limits also come from running attribute
sweeps against torch (the conformance cases in edgeport.testing sweep each pooling and
convolution attribute; `_conv_limits` below and pool_rewrite.py hold what they found).
Every row that says "no" or adds a limit records what onnxruntime-qnn 2.7.0 (QNN's HTP
simulator) refused or got wrong, and has a test in
tests/backends/qualcomm/test_qualcomm_corrections.py that fails if QNN changes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.fx import Node

import edgeport
from edgeport import support
from edgeport.quantize.node_dtypes import is_quantization_node

from .infinities import SATURATES_INF, has_infinite_literal
from .pow_rewrite import MAX_EXPONENT
from .qdq_support import check_quantization

aten = torch.ops.aten

FLOAT = frozenset({torch.float32, torch.float16})
INDEX = frozenset({torch.int32, torch.int64})  # int64 is narrowed to int32 by the QNN EP
BOOL = frozenset({torch.bool})
NUMERIC = FLOAT | INDEX
ANY = NUMERIC | BOOL
MAX_RANK = 5  # QNN HTP: "has incorrect Rank 6" for anything wider

Check = Callable[[Node], "str | None"]  # returns a reason to decline, or None


@dataclass(frozen=True)
class Rule:
    """How one aten op reaches QNN HTP: the ONNX op(s), dtypes allowed, extra limits."""

    onnx: str
    dtypes: frozenset[torch.dtype] = NUMERIC
    check: Check | None = None


def _rounding_on_int64(node: Node) -> str | None:
    if node.kwargs.get("rounding_mode") and support.output_dtype(node) == torch.int64:
        return "QNN refuses the int64 Cast that torch.onnx emits for rounding int64 division"
    return None


def _max_pool_limits(node: Node) -> str | None:
    if 1 in support.read_outputs(node):
        return "QNN refuses MaxPool with an indices output"
    dilation = node.args[4] if len(node.args) > 4 else [1]
    if any(d != 1 for d in dilation):
        return "QNN refuses dilated pooling (\"QNN Pool only supports dilations 1!\")"
    return None


def _avg_pool_limits(node: Node) -> str | None:
    if len(node.args) > 6 and node.args[6] is not None:
        return ("torch.onnx drops divisor_override: its AveragePool divides by the window size "
                "(ONNX Runtime's CPU EP gives the same wrong answer)")
    return None


def _conv_limits(node: Node) -> str | None:
    """Attribute combinations QNN HTP computes wrongly although the exported ONNX is right
    (ONNX Runtime's CPU EP matches torch on it); each measured in the simulator."""
    stride, padding, dilation, transposed, output_padding, groups = node.args[3:9]
    spatial = len(_shape(node.args[0])) - 2
    if transposed and spatial == 3:
        if groups != 1:
            return "QNN HTP returns wrong values for grouped (or depthwise) 3d transposed convolution"
        if len(set(padding)) > 1:
            return ("QNN HTP returns wrong values for 3d transposed convolution padded unequally per dim "
                    f"{tuple(padding)}")
        if any(output_padding):  # the border only the bias reaches comes back without it
            return "QNN HTP returns wrong values for 3d transposed convolution with output_padding"
    if transposed and groups != 1 and any(output_padding):
        return "QNN HTP returns wrong values for grouped transposed convolution with output_padding"
    if not transposed and spatial == 1 and list(stride) == [1] and any(d != 1 for d in dilation) and any(padding):
        return "QNN HTP returns wrong values for padded dilated 1d convolution at stride 1"
    return None


def _no_indices_read(node: Node) -> str | None:
    if 1 in support.read_outputs(node):
        return ("its indices are read: QNN HTP compares in fp16, where values closer than 1 part in 2048 tie, so "
                "their indices come back in another order (the OpInfo sweep's sort of integers up to 8000)")
    return None


def _integer_exponent(node: Node) -> str | None:
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if not isinstance(exponent, (int, float)) or isinstance(exponent, bool) or not float(exponent).is_integer():
        return ("an exponent that is not a constant integer: QNN HTP returns -131008 or 131008 where torch gives "
                "NaN (a negative base to a fractional power; seen in the simulator, OpInfo sweep __rpow__)")
    if not 1 <= exponent <= MAX_EXPONENT:
        return (f"an exponent outside 1..{MAX_EXPONENT}: QNN HTP's Pow is wrong at zero (0 ** 0 is 0, 0 ** -1 is 0); "
                "positive ones are written as multiplications (pow_rewrite.py)")
    return None


def _adaptive_not_even(node: Node) -> str | None:
    size_in = _shape(node.args[0])[-2:]
    size_out = list(node.args[1])
    if any(i % o for i, o in zip(size_in, size_out)):
        return (
            f"input {tuple(size_in)} is not a multiple of output {tuple(size_out)}: torch.onnx "
            "emits a GatherND/Where graph that QNN refuses"
        )
    return None


def _norm_l2_only(node: Node) -> str | None:
    order = node.args[1] if len(node.args) > 1 else node.kwargs.get("ord", 2)
    return None if order == 2 else f"only the L2 norm maps to ReduceL2 (got ord={order})"


def _pad_mode(node: Node) -> str | None:
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    if mode in ("constant", "reflect"):
        return None
    if mode == "replicate":
        return "QNN HTP returns wrong values for replicate padding (seen in the simulator)"
    return f"{mode} padding is not verified on QNN HTP"


def _squeeze_limits(node: Node) -> str | None:
    if node.target is aten.squeeze.dims and _shape(node.args[0]) == _shape(node):
        return ("torch.onnx cannot export squeeze.dims when it removes no dimension (it becomes "
                "prims.view_of, which has no ONNX function)")
    return None


def _not_of_a_scalar(node: Node) -> str | None:
    if not _shape(node.args[0]) and not (node.args[1:] and node.args[1] or node.kwargs.get("dim")):
        return "torch.onnx cannot export amax/amin of a 0-d tensor over all dimensions"
    return None


def _last_dim_broadcast_into_square_rank5(node: Node) -> str | None:
    """The one Mul that kills the process: rank-5 values whose last two dims are both n, times
    a lower-rank operand (1, ..., 1, n) broadcast along the last dim. HTP's compiler segfaults on
    it (onnxruntime-qnn 2.7.0; OpInfo sweep, trilinear interpolate's (3,) weight against
    (2, 3, 3, 3, 3)); the same with a rank-5 operand (1, 1, 1, 1, n), rank 4, or other
    trailing dims compiles. Only a constant operand kills it, but one computed from constants
    (as here) is a node until folding, so a run-time operand is declined too."""
    out = _shape(node)
    if len(out) != MAX_RANK or out[-1] <= 1 or out[-2] != out[-1]:
        return None
    for operand in node.args[:2]:
        shape = _shape(operand) if isinstance(operand, Node) else []
        if 0 < len(shape) < MAX_RANK and shape[-1] == out[-1] and all(d == 1 for d in shape[:-1]):
            return (f"rank-5 {tuple(out)} times a {tuple(shape)} operand broadcast along the last dim: QNN HTP's "
                    "compiler dies of a segfault on it (trilinear interpolation's weights)")
    return None


def _bool_only(node: Node) -> str | None:
    return None if support.output_dtype(node) == torch.bool else "QNN has no bitwise ops on integers (BitwiseAnd refused)"


RULES: dict[Any, Rule] = {
    # elementwise arithmetic and activations
    **{op: Rule(onnx) for op, onnx in (
        (aten.add, "Add"), (aten.sub, "Sub"), (aten.neg, "Neg"),
        (aten.abs, "Abs"), (aten.maximum, "Max"), (aten.minimum, "Min"),
        (aten.clamp, "Clip"), (aten.clamp_min, "Max"), (aten.clamp_max, "Min"),
        (aten.sign, "Sign"),
    )},
    **{op: Rule(onnx, FLOAT) for op, onnx in (
        (aten.exp, "Exp"), (aten.log, "Log"), (aten.sqrt, "Sqrt"), (aten.rsqrt, "Sqrt+Reciprocal"),
        (aten.reciprocal, "Reciprocal"), (aten.sigmoid, "Sigmoid"),
        (aten.tanh, "Tanh"), (aten.relu, "Relu"), (aten.gelu, "Gelu"), (aten.leaky_relu, "LeakyRelu"),
        (aten.elu, "Elu"), (aten.sin, "Sin"), (aten.cos, "Cos"), (aten.remainder, "Div+Floor+Mul+Sub"),
        (aten.atan2, "Atan+Where"), (aten.isnan, "IsNaN"), (aten.hardtanh, "Clip"),
        (aten.hardswish, "HardSwish"), (aten.hardsigmoid, "HardSigmoid"), (aten.prelu, "PRelu"),
        (aten.softplus, "Softplus"), (aten.mish, "Softplus+Tanh+Mul"),
    )},
    aten.mul: Rule("Mul", NUMERIC, _last_dim_broadcast_into_square_rank5),
    aten.div: Rule("Div", NUMERIC, _rounding_on_int64),
    aten.pow: Rule("Pow", FLOAT, _integer_exponent),
    aten.where: Rule("Where", ANY),  # a bool condition picks between numeric values
    # comparisons and logic
    **{op: Rule(onnx, ANY) for op, onnx in (
        (aten.eq, "Equal"), (aten.ne, "Equal+Not"), (aten.lt, "Less"), (aten.le, "LessOrEqual"),
        (aten.gt, "Greater"), (aten.ge, "GreaterOrEqual"), (aten.logical_not, "Not"),
        (aten.logical_and, "And"), (aten.logical_or, "Or"), (aten.any, "ReduceMax"),
    )},
    aten.bitwise_not: Rule("Not", ANY, _bool_only),
    aten.bitwise_and: Rule("And", ANY, _bool_only),
    aten.bitwise_or: Rule("Or", ANY, _bool_only),
    # linear algebra, convolution, pooling
    aten.linear: Rule("Gemm/MatMul+Add", FLOAT),
    aten.matmul: Rule("MatMul", FLOAT),
    aten.mm: Rule("MatMul", FLOAT),
    aten.bmm: Rule("MatMul", FLOAT),
    aten.addmm: Rule("Gemm", FLOAT),
    aten.convolution: Rule("Conv/ConvTranspose", FLOAT, _conv_limits),
    # Pools are rewritten at export so QNN never pads them itself (pool_rewrite.py).
    aten.max_pool2d_with_indices: Rule("MaxPool", FLOAT, _max_pool_limits),
    aten.avg_pool2d: Rule("AveragePool", FLOAT, _avg_pool_limits),
    aten._adaptive_avg_pool2d: Rule("AveragePool", FLOAT, _adaptive_not_even),
    aten.upsample_nearest2d: Rule("Resize", FLOAT),
    aten.upsample_bilinear2d: Rule("Resize", FLOAT),
    aten.scaled_dot_product_attention: Rule("MatMul+Softmax", FLOAT | BOOL),  # bool: the mask
    # normalization and reductions
    aten.native_layer_norm: Rule("LayerNormalization", FLOAT),
    aten.native_group_norm: Rule("InstanceNormalization+Mul+Add", FLOAT),
    aten.instance_norm: Rule("InstanceNormalization", FLOAT),
    aten._native_batch_norm_legit_no_training: Rule("BatchNormalization", FLOAT),
    aten._softmax: Rule("Softmax", FLOAT),
    aten._log_softmax: Rule("LogSoftmax", FLOAT),
    aten.mean: Rule("ReduceMean", FLOAT),
    aten.sum: Rule("ReduceSum"),
    aten.amax: Rule("ReduceMax", NUMERIC, _not_of_a_scalar),
    aten.amin: Rule("ReduceMin", NUMERIC, _not_of_a_scalar),
    aten.max: Rule("ReduceMax/ArgMax"),
    aten.min: Rule("ReduceMin/ArgMin"),
    aten.argmax: Rule("ArgMax"),
    aten.argmin: Rule("ArgMin"),
    aten.var: Rule("ReduceMean+Sub+Mul", FLOAT),
    aten.linalg_vector_norm: Rule("ReduceL2", FLOAT, _norm_l2_only),
    aten.cumsum: Rule("CumSum"),
    aten.topk: Rule("TopK", NUMERIC, _no_indices_read),
    aten.sort: Rule("TopK", NUMERIC, _no_indices_read),
    # data movement
    **{op: Rule(onnx, ANY) for op, onnx in (
        (aten.view, "Reshape"), (aten._unsafe_view, "Reshape"), (aten.reshape, "Reshape"),
        (aten.permute, "Transpose"), (aten.unsqueeze, "Unsqueeze"),
        (aten.expand, "Expand"), (aten.clone, "Identity"), (aten.alias, "Identity"),
        (aten.cat, "Concat"), (aten.slice, "Slice"), (aten.select, "Gather"),
        (aten.split_with_sizes, "Split"), (aten.split, "Split"), (aten.constant_pad_nd, "Pad"),
        (aten.pixel_shuffle, "DepthToSpace"),
        (aten.flip, "Slice"), (aten.repeat, "Tile"), (aten.index_select, "Gather"),
        (aten.gather, "GatherElements"), (aten.embedding, "Gather"), (aten._to_copy, "Cast"),
        (aten.full, "constant"), (aten.full_like, "constant"), (aten.scalar_tensor, "constant"),
        (aten.arange, "constant"), (aten._assert_tensor_metadata, "(nothing)"),
    )},
    aten.squeeze: Rule("Squeeze", ANY, _squeeze_limits),
    aten.pad: Rule("Pad", ANY, _pad_mode),
    operator.getitem: Rule("(output of a multi-output op)", ANY),
}

# Ops worth keeping whole at capture: torch.onnx writes each as one ONNX op QNN takes.
KEEP_OPS = frozenset({
    aten.linear.default,  # Gemm, not permute + addmm
    aten.hardswish.default,  # HardSwish, not add/clamp/clamp/mul/div
    aten.hardsigmoid.default,  # HardSigmoid
    aten.pixel_shuffle.default,  # DepthToSpace, not reshape/permute/reshape
    aten.pad.default,  # Pad(reflect); decomposed it is index gathers, which HTP gets wrong
    aten.scaled_dot_product_attention.default,  # without the masking-guard ops
})

# Refusals seen from QNN; each is tested in test_qualcomm_corrections.py.
DECLINED: dict[Any, str] = {
    aten.erf: "QNN EP has no Erf (\"Operators of type `Erf` are not supported by QNN EP\"); "
    "exact GELU is fine as aten.gelu",
    aten.fmod: "QNN EP refuses ONNX Mod on HTP; aten.remainder works",
    aten.prod: "QNN EP refuses ReduceProd on HTP",
    aten.index: "QNN HTP GatherND returns wrong values (seen in the simulator on rank-3 data, so every "
    "aten.index is declined, whatever its rank); index_select/gather work",
    aten.scatter: "QNN EP refuses the ConstantOfShape/ScatterElements torch.onnx emits for scatter",
    **{op: "QNN HTP computes float ops in fp16, rounding the input to 11 significant bits first, so the "
       "result is off by one near an integer (ceil(-5.998) gave -6)" for op in (aten.floor, aten.ceil, aten.round)},
    **{op: "random ops are not deterministic on an NPU; run them portably" for op in (
        aten.rand, aten.randn, aten.bernoulli, aten.randint, aten.rand_like, aten.randn_like,
    )},
}


def check_support(node: Node, non_finite: Mapping[str, str] | None = None) -> edgeport.Support:
    """QNN HTP's answer for one node; never raises. ``non_finite``: the nodes that pass
    an infinity or a NaN known at export on to an output, with which
    (`infinities.non_finite_flows`)."""
    answer = _CHECK(node)
    if answer and node.op == "call_function":
        return _passes_only_finite_values_out(node, non_finite or {})
    return answer


def _packet(node: Node) -> Any:
    return getattr(node.target, "overloadpacket", node.target)


def _in_table(node: Node) -> edgeport.Support:
    if _packet(node) in RULES:
        return edgeport.Support.yes()
    return edgeport.Support.no(f"{support.op_label(node)}: no QNN HTP lowering known (not in the qualcomm op table)")


def _no_infinite_literal(node: Node) -> edgeport.Support:
    if has_infinite_literal(node):
        return edgeport.Support.no(f"{support.op_label(node)}: an infinite constant; {SATURATES_INF}")
    return edgeport.Support.yes()


def _passes_only_finite_values_out(node: Node, non_finite: Mapping[str, str]) -> edgeport.Support:
    """A node passing an infinity or a NaN known at export on to a program output (infinities.py)."""
    passed = non_finite.get(node.name)
    return edgeport.Support.no(f"{support.op_label(node)}: {passed}") if passed else edgeport.Support.yes()


def _rule_limits(node: Node) -> edgeport.Support:
    limits = RULES[_packet(node)].check
    reason = limits(node) if limits is not None else None
    return edgeport.Support.no(f"{support.op_label(node)}: {reason}") if reason else edgeport.Support.yes()


_TABLE_CHECK = support.all_of(
    support.decline_if_op_in(DECLINED),
    _no_infinite_literal,
    _in_table,
    support.decline_if_symbolic(
        "{op}: dynamic shape {shape}; QNN HTP has no dynamic shapes (a context is compiled for static sizes)"),
    support.decline_if_empty("{op}: zero-size tensor {shape}; the QNN HTP simulator dies of a floating point "
                             "exception on one"),
    support.decline_if_rank_above(MAX_RANK, "{op}: rank-{rank} tensor; QNN HTP tensors have at most {limit} dimensions"),
    support.decline_if_dtype_not_in(lambda node: RULES[_packet(node)].dtypes,
                                    "{op}: {dtype} tensors not supported on QNN HTP (this op takes {allowed})"),
    _rule_limits,
)


def _check(node: Node) -> edgeport.Support:
    if node.op != "call_function":
        return edgeport.Support.yes()
    if is_quantization_node(node):
        return check_quantization(node)
    return _TABLE_CHECK(node)


_CHECK = support.never_raising(_check, "qualcomm could not inspect {op}: {error}")


def _shape(node: Any) -> list[int]:
    return list(node.meta["val"].shape)
