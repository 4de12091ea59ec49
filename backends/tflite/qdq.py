"""Reading a quantized (PT2E-converted) graph: which nodes quantize or dequantize, and how.

After `convert_pt2e`, a quantized value shows up as a pair of nodes around float ops:

- static int8 activations: `quantized_decomposed.quantize_per_tensor` then
  `dequantize_per_tensor`, scale and zero point as literal arguments;
- int8 weights: `dequantize_per_channel` (or `dequantize_per_tensor`) of an int8 constant;
- group-wise weights (int4 stored in int8): `torchao.dequantize_affine` of an int8
  constant with block size (1, group);
- activations quantized at run time, per token: `torchao.choose_qparams_affine` ->
  two getitems -> `torchao.quantize_affine` -> `torchao.dequantize_affine`.

Ops are matched by qualified name, so nothing here imports torchao or needs the
quantized op libraries registered: a float graph never pays for them.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.fx import Node

from edgeport.support import CHOOSE_AFFINE, DEQUANTIZE, DEQUANTIZE_AFFINE, DEQUANTIZE_CHANNEL, QUANTIZE, QUANTIZE_AFFINE
from edgeport.support import qualified_name as op_name

from .flatbuffer import Quantization


# The int8 range of activations (TFLite's and XNNPACK's QS8 tensors).
INT8_RANGE = (-128, 127)
FP16_TINY = 2.0**-14  # smallest normal float16: LiteRT's block scales are float16


QUANTIZATION_OPS = frozenset({QUANTIZE, DEQUANTIZE, DEQUANTIZE_CHANNEL, CHOOSE_AFFINE, QUANTIZE_AFFINE, DEQUANTIZE_AFFINE})


def is_quantization_op(node: Any) -> bool:
    """True for a quantize, dequantize or run-time quantization parameter node."""
    return op_name(node) in QUANTIZATION_OPS


def is_affine_quantization_op(node: Any) -> bool:
    """True for torchao's affine ops: activations quantized at run time (per token) and
    group-wise weights, as opposed to quantization with fixed per-tensor or per-channel
    parameters."""
    return op_name(node) in (CHOOSE_AFFINE, QUANTIZE_AFFINE, DEQUANTIZE_AFFINE)


def is_static(node: Any, name: str) -> bool:
    """True for a per-tensor quantize/dequantize with literal parameters (`.default`)."""
    return op_name(node) == name and node.target._overloadname == "default"


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine int8 parameters: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def tflite(self) -> Quantization:
        return Quantization((self.scale,), (self.zero_point,))

    def quantize(self, value: float) -> int:
        """`value` as the int8 that represents it (saturated)."""
        if math.isinf(value):
            return INT8_RANGE[0] if value < 0 else INT8_RANGE[1]
        q = round(value / self.scale) + self.zero_point
        return max(INT8_RANGE[0], min(INT8_RANGE[1], q))


def static_qparams(node: Node) -> QParams | None:
    """The parameters of a per-tensor int8 quantize/dequantize node, or None when it is
    another kind (other range, dtype or overload)."""
    if not (is_static(node, QUANTIZE) or is_static(node, DEQUANTIZE)):
        return None
    _, scale, zero_point, qmin, qmax, dtype = node.args[:6]
    if dtype != torch.int8 or (qmin, qmax) != INT8_RANGE:
        return None
    return QParams(float(scale), int(zero_point))


def quantizes_to(node: Node) -> QParams | None:
    """The int8 parameters when `node` is a static per-tensor quantize."""
    return static_qparams(node) if is_static(node, QUANTIZE) else None


def dequantizes_from(node: Any) -> QParams | None:
    """The int8 parameters when `node` is a static per-tensor dequantize."""
    return static_qparams(node) if isinstance(node, Node) and is_static(node, DEQUANTIZE) else None


# -- weights ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedWeight:
    """A constant weight as its integers and scales (symmetric: zero points are 0).

    `scale` has one entry per output channel (dim 0), or one per block of `block_size`
    along dim 1 (shape (out, in / block_size)) for group-wise weights. `bits` is 8 or 4.
    """

    values: torch.Tensor  # int8, torch's layout of the weight
    scale: torch.Tensor  # float32
    bits: int
    block_size: int | None = None


ConstantOf = Callable[[Node], "torch.Tensor | None"]


def weight_reason(node: Any, constant: ConstantOf) -> str | None:
    """None when `node` dequantizes a constant weight the writer stores as integers
    (symmetric int8 per channel along dim 0 or per tensor, or symmetric group-wise
    4-bit along dim 1), else why not."""
    if not isinstance(node, Node):
        return "the weight is not a node"
    name = op_name(node)
    if name not in (DEQUANTIZE, DEQUANTIZE_CHANNEL, DEQUANTIZE_AFFINE):
        return "the weight is not dequantized from integers"
    if constant(node.args[0]) is None:
        return "the quantized weight is not a constant"
    if name == DEQUANTIZE_AFFINE:
        return _affine_weight_reason(node, constant)
    if name == DEQUANTIZE_CHANNEL:
        _, _, zero_point, axis, qmin, qmax, dtype = node.args[:7]
        zero_point = constant(zero_point)
        if axis != 0:
            return f"per-channel weight scales along dim {axis} (the writer takes dim 0)"
    else:
        if node.target._overloadname != "default":
            return "a per-tensor weight scale computed at run time"
        _, _, zero_point, qmin, qmax, dtype = node.args[:6]
    if dtype != torch.int8 or qmin < -128 or qmax > 127:
        return f"weight range [{qmin}, {qmax}] of {dtype} is not int8"
    if zero_point is None or _any_nonzero(torch.as_tensor(zero_point), constant):
        return "asymmetric weights (TFLite's int8 weights have zero point 0)"
    return None


def _affine_weight_reason(node: Node, constant: ConstantOf) -> str | None:
    block, _, zero_point, dtype, qmin, qmax = node.args[1:7]
    shape = tuple(constant(node.args[0]).shape)
    if len(shape) != 2 or tuple(block) != (1, block[1]) or block[1] == shape[1]:
        return f"block size {tuple(block)} of a {shape} weight (group-wise blocks along dim 1 are written)"
    if dtype != torch.int8 or (qmin, qmax) != (-8, 7):
        return f"group-wise weights of range [{qmin}, {qmax}] (4-bit [-8, 7] is written)"
    if constant(zero_point) is None or _any_nonzero(constant(zero_point), constant):
        return "asymmetric group-wise weights (LiteRT's INT4 blocks have no zero point)"
    if shape[1] % block[1] or block[1] % 32:
        return f"group size {block[1]} (LiteRT's INT4 blocks are a multiple of 32 dividing {shape[1]})"
    scale = constant(node.args[2])
    if scale is None or not _fp16_normal(scale, constant):
        return "a group scale outside float16's normal range (XNNPACK takes only normal FLOAT16 block scales)"
    return None


def _any_nonzero(t: torch.Tensor, constant: ConstantOf) -> bool:
    return _fact(constant, "nonzero", t, lambda t: bool(t.ne(0).any()))


def _fp16_normal(scale: torch.Tensor, constant: ConstantOf) -> bool:
    return _fact(constant, "fp16 normal", scale,
                 lambda s: bool(torch.isfinite(s.half()).all()) and not bool((s.abs() < FP16_TINY).any()))


def _fact(constant: ConstantOf, name: str, tensor: torch.Tensor, compute: Callable[[torch.Tensor], bool]) -> bool:
    """``compute(tensor)``, remembered by the program's constants when they can (a
    `lowering.ConstantValues`)."""
    remember = getattr(constant, "fact", None)
    return remember(name, tensor, compute) if remember is not None else compute(tensor)


def quantized_weight(node: Node, constant: ConstantOf) -> QuantizedWeight:
    """The integers and scales of a weight `weight_reason` accepts."""
    values = constant(node.args[0])
    scale = torch.as_tensor(constant(node.args[1]) if isinstance(node.args[1], Node) else node.args[1])
    scale = scale.to(torch.float32)
    if op_name(node) == DEQUANTIZE_AFFINE:
        block = int(node.args[1][1])
        scale = torch.as_tensor(constant(node.args[2])).to(torch.float32).reshape(values.shape[0], -1)
        return QuantizedWeight(values, scale, bits=4, block_size=block)
    return QuantizedWeight(values, scale.reshape(-1), bits=8)


# -- activations quantized at run time ---------------------------------------------------------


def dynamic_source(node: Any) -> Node | None:
    """The float input when `node` is the end of a per-token dynamic quantization chain
    (choose_qparams_affine -> quantize_affine -> dequantize_affine of the same tensor,
    asymmetric int8, blocks of one row), else None."""
    if not isinstance(node, Node) or op_name(node) != DEQUANTIZE_AFFINE:
        return None
    quantized = node.args[0]
    if op_name(quantized) != QUANTIZE_AFFINE:
        return None
    source, block, scale, zero_point = quantized.args[:4]
    picks = [scale, zero_point]
    if not all(isinstance(p, Node) and p.target is operator.getitem for p in picks):
        return None
    choose = scale.args[0]
    if op_name(choose) != CHOOSE_AFFINE or zero_point.args[0] is not choose or choose.args[0] is not source:
        return None
    if choose.args[1] != "ASYMMETRIC" or choose.args[3] != torch.int8 or tuple(choose.args[4:6]) != INT8_RANGE:
        return None
    shape = tuple(source.meta["val"].shape) if isinstance(source, Node) else ()
    if not shape or tuple(block) != (1,) * (len(shape) - 1) + (shape[-1],):
        return None
    return source


def dynamic_chain(source: Node) -> list[Node]:
    """The nodes of every dynamic quantization chain reading `source` (choose, getitems,
    quantize, dequantize), in graph order."""
    chain: list[Node] = []
    for choose in source.users:
        if op_name(choose) != CHOOSE_AFFINE:
            continue
        picks = list(choose.users)
        quantizes = {u for p in picks for u in p.users if op_name(u) == QUANTIZE_AFFINE}
        dequantizes = {u for q in quantizes for u in q.users}
        chain += [choose, *picks, *quantizes, *dequantizes]
    return chain
