"""Int8 forms of op lowerings: XNNPACK's QS8 kernels, and integer-weight linears.

Each `int8_lowering` below is the int8 form of an op whose float lowering is in the
other modules; its `Int8Signature` says which tensors are int8, and is what the
quantizer annotates (tflite/quantizer.py), so what gets quantized is what is written
here. The writer picks the int8 form per node (int8_plan.py); `form` carries the
parameters of the int8 inputs (read through their dequantizes) and of the output.

Tensors follow TFLite's int8 spec: activations int8 per tensor; weights int8 per
output channel with zero point 0; biases int32 with scale input scale x weight scale.
A batch norm folded into a conv scales each channel's weight scale (its integers stay
as quantized), and a negative factor flips that channel's integers' sign, so the
fold is exact.

`hybrid_linear` writes a linear whose input is quantized per token at run time: a
FULLY_CONNECTED with a float input and int8 per-channel or INT4 blockwise weights.

`xnnpack=False` marks the int8 operators LiteRT 2.3's XNNPACK delegate leaves to
TFLite's kernels (its xnnpack_delegate.cc checks float tensors for them): standalone
RELU, RELU6, HARD_SWISH, SOFTMAX, AVERAGE_POOL_2D, GELU, and BATCH_MATMUL of two
runtime tensors (tests/backends/cpu/test_cpu_quantized.py lists what a loaded model
leaves out).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

import numpy as np
import torch
from torch.fx import Node

from .. import layout, qdq
from ..emitter import Emitter, Value
from ..flatbuffer import Blockwise, Options, Quantization
from ..int8_plan import Int8Form
from ..lowering import Int8Signature, IsConst, aten, int8_lowering, lookup, shape
from ..qdq import QParams
from ..schema import tensor_type, tfl
from .conv import (_conv_args, adaptive_avg_pool2d, avg_pool2d, bn_affine, conv1d_input, conv2d_options, conv_geometry,
                   max_pool2d)
from .elementwise import clamp_activation, gelu_options, same_value
from .matmul import batch_matmul
from .reduce import reduce, softmax
from .shape import broadcast_writes, constant_pad, expand, permute, slice_, transpose, view

INT8 = torch.int8
ACTIVATION = Int8Signature()
SHARED = Int8Signature(output="shared")
# TFLite's int8 LOGISTIC and SOFTMAX produce values in [0, 1) at this fixed scale.
UNIT_INTERVAL = Int8Signature(fixed=(1.0 / 256.0, -128))

# -- reading int8 inputs ------------------------------------------------------------------------


def int8_input(em: Emitter, form: Int8Form, dequantize: Node) -> Value:
    """The int8 Value an int8 op reads through `dequantize`."""
    v = em.env[dequantize.args[0]]
    if not isinstance(v, Value) or v.quant != form.params(dequantize):
        raise ValueError(f"{dequantize.name}: the int8 tensor it reads is not quantized as it says")
    return v


@contextlib.contextmanager
def reading_int8(em: Emitter, form: Int8Form) -> Iterator[None]:
    """While inside, the op's dequantize arguments resolve to their int8 Values, so a
    float emit that only moves values (views, pools) writes them on int8 tensors."""
    saved = {dq: em.env.get(dq) for dq, _ in form.inputs}
    for dq, _ in form.inputs:
        em.env[dq] = int8_input(em, form, dq)
    try:
        yield
    finally:
        em.env.update(saved)


def with_params(em: Emitter, v: Value, params: QParams) -> Value:
    """`v` (an int8 tensor a float emit wrote) with its parameters set to `params`."""
    em.builder.tensors[v.tensor].quantization = params.tflite()
    return dataclasses.replace(v, quant=params)


def _moved(em: Emitter, node: Node, form: Int8Form, emit) -> Value:  # noqa: ANN001 - a float emit
    """An op that only moves or picks values, written by its float emit on int8 tensors."""
    with reading_int8(em, form):
        value = emit(em, node)
    value = value[0] if isinstance(value, tuple) else value
    return with_params(em, value, form.output)


def _int8_operands(em: Emitter, form: Int8Form, dequantizes: list[Node], rank: int) -> tuple[list[int], layout.Perm]:
    """The int8 tensors an op reads through `dequantizes`, broadcast to `rank` in one
    layout: runtime int8 Values, or stored tensors (a position embedding, a class token)
    written as int8 constants at the parameters their dequantize gives."""
    stored = [em.constant(dq.args[0]) for dq in dequantizes]  # the integers, or None: a runtime tensor
    args = [int8_input(em, form, dq) if s is None else s for dq, s in zip(dequantizes, stored)]
    tensors, perm = em.broadcast_inputs(args, rank, INT8)
    for tensor, dq, s in zip(tensors, dequantizes, stored):
        if s is not None:
            em.builder.tensors[tensor].quantization = form.params(dq).tflite()
    return tensors, perm


# -- constants ----------------------------------------------------------------------------------


def _int8_weight(em: Emitter, data: np.ndarray, scale: np.ndarray, axis: int, name: str) -> int:
    quantization = Quantization(tuple(float(s) for s in scale), (0,) * len(scale), axis)
    return em.builder.tensor(data.shape, tensor_type(INT8), name, np.ascontiguousarray(data, np.int8), quantization)


def _int32_bias(em: Emitter, bias: np.ndarray, scale: np.ndarray, name: str) -> int:
    """The bias in int32 at scale input scale x weight scale (per channel), zero point 0."""
    values = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
    quantization = Quantization(tuple(float(s) for s in scale), (0,) * len(scale), 0)
    return em.builder.tensor(values.shape, tensor_type(torch.int32), name, values, quantization)


def _weight(em: Emitter, form: Int8Form, out_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float64 scale per output channel) of the op's weight."""
    w = qdq.quantized_weight(form.weight, em.constant)
    scale = w.scale.double().numpy()
    if scale.size == 1:
        scale = np.full(out_channels, float(scale[0]))
    return w.values.numpy().astype(np.int8), scale


# -- convolution --------------------------------------------------------------------------------


def _check_conv(node: Node, is_const: IsConst) -> str | None:
    a = _conv_args(node)
    if a["transposed"]:
        return "int8 transposed convolution"
    if len(shape(a["input"])) not in (3, 4):
        return "int8 convolution of a 5d input"
    if a["bias"] is not None and not is_const(a["bias"]):
        return "a bias computed at run time"
    return None


@int8_lowering(aten.convolution.default, signature=Int8Signature(weight=1, bias=2), check=_check_conv)
def convolution(em: Emitter, node: Node, form: Int8Form) -> Value:
    a = _conv_args(node)
    (dq, params), = form.inputs
    x = int8_input(em, form, dq)
    values, scale = _weight(em, form, shape(node)[1])
    conv1d = len(x.shape) == 3  # run as a conv2d over (1, W), as the float form does
    if conv1d:
        x, values = conv1d_input(em, x), values[:, :, None, :]
    x = em.to_perm(x, layout.NHWC)
    bias = em.arg(a["bias"]).double().numpy() if a["bias"] is not None else np.zeros(values.shape[0])
    if node in em.plan.bn_fold:
        factor, shift = bn_affine(em, em.plan.bn_fold[node])
        bias = bias * factor + shift
        scale = scale * np.abs(factor)
        values = values * np.where(factor < 0, -1, 1).astype(np.int8).reshape(-1, 1, 1, 1)  # exact: symmetric range
    x, options = conv2d_options(em, node, x, values.shape[2:], conv_geometry(a, conv1d))
    out_shape = tuple(shape(node))
    out = em.new(out_shape[:2] + (1,) + out_shape[2:] if conv1d else out_shape, INT8, node.name, layout.NHWC,
                 form.output)
    b = _int32_bias(em, bias, params.scale * scale, node.name + "/bias")
    c_in, c_out = x.shape[1], values.shape[0]
    if a["groups"] == c_in and a["groups"] > 1 and c_out % c_in == 0:
        w = _int8_weight(em, values.transpose(1, 2, 3, 0), scale, 3, node.name + "/filter")  # (1, kh, kw, O)
        options["DepthMultiplier"] = c_out // c_in
        em.op("DEPTHWISE_CONV_2D", [x.tensor, w, b], [out], Options("DepthwiseConv2DOptions", options))
    else:
        w = _int8_weight(em, values.transpose(0, 2, 3, 1), scale, 0, node.name + "/filter")  # (O, kh, kw, I/g)
        em.op("CONV_2D", [x.tensor, w, b], [out], Options("Conv2DOptions", options))
    return em.reshape(out, out_shape) if conv1d else out


# -- linear -------------------------------------------------------------------------------------


def _check_linear(node: Node, is_const: IsConst) -> str | None:
    bias = node.args[2] if len(node.args) > 2 else None
    if not is_const(node.args[1]) or (bias is not None and not is_const(bias)):
        return "weights or bias computed at run time"
    if len(shape(node.args[1])) != 2:
        return "a weight that is not 2d"
    return None


def _fc_input(em: Emitter, x: Value) -> tuple[Value, int]:
    """`x` with its last logical dim innermost, and its rank."""
    rank = len(x.shape)
    if x.perm[-1] != rank - 1:
        x = em.to_perm(x, tuple(p for p in x.perm if p != rank - 1) + (rank - 1,))
    return x, rank


@int8_lowering(aten.linear.default, signature=Int8Signature(weight=1, bias=2), check=_check_linear)
def linear(em: Emitter, node: Node, form: Int8Form) -> Value:
    (dq, params), = form.inputs
    x = int8_input(em, form, dq)
    if len(x.shape) == 1:
        raise ValueError(f"{node.name}: int8 linear of a 1d input")
    x, rank = _fc_input(em, x)
    out_features = shape(node.args[1])[0]
    values, scale = _weight(em, form, out_features)
    bias_arg = node.args[2] if len(node.args) > 2 else None
    bias = em.arg(bias_arg).double().numpy() if bias_arg is not None else np.zeros(out_features)
    w = _int8_weight(em, values, scale, 0, node.name + "/weight")
    b = _int32_bias(em, bias, params.scale * scale, node.name + "/bias")
    out = em.new(x.shape[:-1] + (out_features,), INT8, node.name, x.perm, form.output)
    options = Options("FullyConnectedOptions", {"FusedActivationFunction": em.activation(node), "KeepNumDims": rank > 2})
    em.op("FULLY_CONNECTED", [x.tensor, w, b], [out], options)
    return out


def hybrid_linear(em: Emitter, node: Node) -> Value:
    """A linear whose input is quantized per token at run time: FULLY_CONNECTED with the
    float input, int8 per-channel or INT4 blockwise weights, float bias and output."""
    x, rank = _fc_input(em, em.value(em.plan.hybrid[node]))
    w = qdq.quantized_weight(node.args[1], em.constant)
    out_features = w.values.shape[0]
    if w.bits == 4:
        weight = _int4_blockwise(em, w, node.name + "/weight")
    else:
        scale = w.scale.double().numpy()
        scale = np.full(out_features, float(scale[0])) if scale.size == 1 else scale
        weight = _int8_weight(em, w.values.numpy(), scale, 0, node.name + "/weight")
    bias_arg = node.args[2] if len(node.args) > 2 else None
    bias = em.arg(bias_arg).float().numpy() if bias_arg is not None else np.zeros(out_features, np.float32)
    b = em.builder.tensor(bias.shape, tensor_type(torch.float32), node.name + "/bias", bias.astype(np.float32))
    out = em.new(x.shape[:-1] + (out_features,), torch.float32, node.name, x.perm)
    options = {"FusedActivationFunction": em.activation(node), "KeepNumDims": rank > 2, "AsymmetricQuantizeInputs": True}
    em.op("FULLY_CONNECTED", [x.tensor, weight, b], [out], Options("FullyConnectedOptions", options))
    return out


def _int4_blockwise(em: Emitter, w: qdq.QuantizedWeight, name: str) -> int:
    """An INT4 weight, two values a byte (the first in the low nibble), with its
    FLOAT16 block scales in a tensor of their own (LiteRT's BlockwiseQuantization)."""
    values = w.values.numpy().astype(np.int8)
    nibbles = (values.reshape(-1, 2) & 0x0F).astype(np.uint8)
    packed = nibbles[:, 0] | (nibbles[:, 1] << 4)
    scales = w.scale.numpy().astype(np.float16)
    scale_tensor = em.builder.tensor(scales.shape, tensor_type(torch.float16), name + "/scales", scales)
    quantization = Quantization(blockwise=Blockwise(scale_tensor, w.block_size))
    return em.builder.tensor(values.shape, tfl().TensorType.INT4, name, packed, quantization)


# -- elementwise --------------------------------------------------------------------------------


def _check_binary(node: Node, is_const: IsConst) -> str | None:
    operands = node.args[:2]
    if not all(isinstance(a, Node) for a in operands):
        return "a Python scalar operand (int8 ADD/MUL take tensors)"
    if node.kwargs.get("alpha", 1) != 1:
        return "alpha != 1"
    return None


_BINARY = {aten.add.Tensor: ("ADD", "AddOptions"), aten.mul.Tensor: ("MUL", "MulOptions")}


@int8_lowering(*_BINARY, signature=Int8Signature(activations=(0, 1), stored=(0, 1)), check=_check_binary)
def binary(em: Emitter, node: Node, form: Int8Form) -> Value:
    """ADD or MUL of two int8 tensors; a stored operand (a position embedding, a layer
    scale) is an int8 constant at its own parameters, laid out at export."""
    name, table = _BINARY[node.target]
    out_shape = shape(node)
    tensors, perm = _int8_operands(em, form, node.args[:2], len(out_shape))
    out = em.new(out_shape, INT8, node.name, perm, form.output)
    em.op(name, tensors, [out], Options(table, {"FusedActivationFunction": em.activation(node)}))
    return out


def _unary(em: Emitter, node: Node, form: Int8Form, name: str, options: Options | None = None) -> Value:
    (dq, _), = form.inputs
    v = int8_input(em, form, dq)
    out = em.new(v.shape, INT8, node.name, v.perm, form.output)
    em.op(name, [v.tensor], [out], options)
    return out


@int8_lowering(aten.hardswish.default, signature=ACTIVATION, xnnpack=False)
def hardswish(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _unary(em, node, form, "HARD_SWISH")


@int8_lowering(aten.sigmoid.default, signature=UNIT_INTERVAL)
def sigmoid(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _unary(em, node, form, "LOGISTIC")


def _check_relu(node: Node, is_const: IsConst) -> str | None:
    if node.target != aten.relu.default and clamp_activation(node) not in ("RELU", "RELU6"):
        return "an int8 clamp other than relu or relu6"
    return None


@int8_lowering(aten.relu.default, aten.hardtanh.default, aten.clamp.default, signature=ACTIVATION, check=_check_relu,
               xnnpack=False)  # fused into a conv, FC or add, XNNPACK runs them
def relu(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _unary(em, node, form, "RELU" if node.target == aten.relu.default else clamp_activation(node))


@int8_lowering(aten._softmax.default, signature=UNIT_INTERVAL, xnnpack=False)
def softmax_int8(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, softmax)


@int8_lowering(aten.gelu.default, signature=ACTIVATION, xnnpack=False)
def gelu_int8(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _unary(em, node, form, "GELU", gelu_options(node))


@int8_lowering(aten.bmm.default, aten.matmul.default, signature=Int8Signature(activations=(0, 1)), xnnpack=False)
def bmm_int8(em: Emitter, node: Node, form: Int8Form) -> Value:
    """BATCH_MATMUL of two int8 activations (attention's products, expanded by the quantizer)."""
    a, b = (int8_input(em, form, dq) for dq in node.args[:2])
    return with_params(em, batch_matmul(em, a, b, node.name, INT8), form.output)


# -- pooling, reductions, data movement ---------------------------------------------------------


@int8_lowering(aten.max_pool2d.default, aten.max_pool2d_with_indices.default, signature=SHARED)
def max_pool(em: Emitter, node: Node, form: Int8Form) -> Value:
    value = _moved(em, node, form, max_pool2d)
    return (value,) if node.target == aten.max_pool2d_with_indices.default else value


@int8_lowering(aten.avg_pool2d.default, signature=SHARED, xnnpack=False)
def avg_pool(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, avg_pool2d)


@int8_lowering(aten._adaptive_avg_pool2d.default, signature=SHARED)
def adaptive_avg_pool(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, adaptive_avg_pool2d)


@int8_lowering(aten.mean.dim, signature=ACTIVATION)
def mean(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, reduce)


_MOVES = (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.squeeze.dims, aten.squeeze.dim,
          aten.squeeze.default, aten.unsqueeze.default)


@int8_lowering(*_MOVES, signature=SHARED, view=True)
def reshape(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, view)


@int8_lowering(aten.clone.default, aten.alias.default, signature=SHARED, view=True)
def copy(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, same_value)


@int8_lowering(aten.permute.default, signature=SHARED, view=True)
def permute_int8(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, permute)


@int8_lowering(aten.t.default, aten.transpose.int, signature=SHARED, view=True)
def transpose_int8(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, transpose)


def _readers(node: Node) -> Iterator[Node]:
    """The ops reading `node`'s value, seen through a quantize and its dequantizes (so
    the float graph the quantizer annotates and the quantized one the writer plans agree)."""
    for user in node.users:
        if qdq.quantizes_to(user) is not None:
            for dequantize in user.users:
                yield from dequantize.users
        else:
            yield user


def _check_slice(node: Node, is_const: IsConst) -> str | None:
    readers = list(_readers(node))
    if any(r.target == aten.cat.default for r in readers):
        # sharing its input's parameters, the slice would bring them into the concatenation's
        # one set: a rotary embedding's cat(-x2, x1) widened its query's range to the negated
        # half's too (the zoo's Llama int8, 28.0 dB from float to 25.4)
        return "a concatenation reads it (in int8 its input would share the concatenation's parameters)"
    if not any(r.op == "call_function" and (e := lookup(r.target)) is not None and e.int8 is not None
               for r in readers):
        # float, it reads the DEQUANTIZE its input's other float readers share; in int8 it
        # needed one of its own (the zoo's Llama: the rotary's negated half, 4 more)
        return "no op with an int8 form reads it"
    return None


@int8_lowering(aten.slice.Tensor, signature=SHARED, check=_check_slice, view=True)
def slice_int8(em: Emitter, node: Node, form: Int8Form) -> Value:
    """SLICE or STRIDED_SLICE on int8 tensors; XNNPACK runs an int8 SLICE (a loaded model
    delegates it: tests/backends/cpu/test_cpu_quantized.py) and a STRIDED_SLICE with a step
    in neither type. A slice between int8 ops ran float between a DEQUANTIZE and a QUANTIZE."""
    return _moved(em, node, form, slice_)


def _check_expand(node: Node, is_const: IsConst) -> str | None:
    if "BROADCAST_TO" in broadcast_writes(shape(node.args[0]), shape(node)):
        return "an int8 expand past 16 copies (BROADCAST_TO, which XNNPACK leaves out)"
    return None


@int8_lowering(aten.expand.default, signature=SHARED, check=_check_expand, view=True)
def expand_int8(em: Emitter, node: Node, form: Int8Form) -> Value:
    """Nothing, or int8 CONCATENATIONs of copies; a matmul's decomposition expands its
    operands to their own shape, which in float cost a DEQUANTIZE and a QUANTIZE."""
    return _moved(em, node, form, expand)


def _check_pad(node: Node, is_const: IsConst) -> str | None:
    if len(node.args) > 2 and float(node.args[2]) != 0.0:
        return "int8 padding with a value other than 0"
    return None


@int8_lowering(aten.constant_pad_nd.default, signature=SHARED, check=_check_pad)
def pad(em: Emitter, node: Node, form: Int8Form) -> Value:
    return _moved(em, node, form, constant_pad)


def _check_cat(node: Node, is_const: IsConst) -> str | None:
    parts = node.args[0]
    if not all(isinstance(p, Node) for p in parts) or all(is_const(p) for p in parts):
        return "no part is computed at run time"
    if len({len(shape(p)) for p in parts}) != 1:
        return "parts of different ranks"
    return None


@int8_lowering(aten.cat.default, signature=Int8Signature(output="shared", stored=(0,)), check=_check_cat)
def cat(em: Emitter, node: Node, form: Int8Form) -> Value:
    """CONCATENATION; a stored part (a ViT's class token) is an int8 constant at the
    parameters the parts share."""
    out_shape = shape(node)
    tensors, perm = _int8_operands(em, form, node.args[0], len(out_shape))
    out = em.new(out_shape, INT8, node.name, perm, form.output)
    dim = layout.normalize_dim(node.args[1] if len(node.args) > 1 else 0, len(out_shape))
    options = Options("ConcatenationOptions", {"Axis": layout.inverse(perm)[dim], "FusedActivationFunction": 0})
    em.op("CONCATENATION", tensors, [out], options)
    return out

