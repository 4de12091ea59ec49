"""Convolutions, batch norm, pooling and resizing: the ops that work in NHWC.

Their input is moved to NHWC (once per value; a network's activations stay NHWC
from the first conv to the classifier) and their output is NHWC. Torch's symmetric
padding maps to TFLite SAME or VALID when that is exact, otherwise to an explicit PAD
followed by a VALID op. A batch norm that follows a conv is folded into its weights.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..lowering import FLOAT, IsConst, aten, by_target, lookup, lowering, meta, shape
from ..schema import tfl
from . import winograd
from .shape import pad

# -- padding ------------------------------------------------------------------------------


def padding_mode(
    sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int], pads: Sequence[int]
) -> str | None:
    """"VALID" or "SAME" when TFLite's rule gives exactly torch's symmetric `pads`, else None."""
    if all(p == 0 for p in pads):
        return "VALID"
    for n, k, s, d, p in zip(sizes, kernel, stride, dilation, pads):
        eff = d * (k - 1) + 1
        out = (n + 2 * p - eff) // s + 1
        if out != math.ceil(n / s):
            return None
        total = max((out - 1) * s + eff - n, 0)
        if total // 2 != p:
            return None
    return "SAME"


def _pad_spatial(em: Emitter, node: Node, x: Value, pads: Sequence[int], value: float) -> Value:
    """Explicitly pad the trailing spatial dims of an NCHW-logical value by `pads`."""
    rank = len(x.shape)
    full = [(0, 0)] * (rank - len(pads)) + [(p, p) for p in pads]
    return pad(em, node, x, full, value)


# -- convolution --------------------------------------------------------------------------


def _conv_args(node: Node) -> dict[str, Any]:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
    return dict(zip(names, node.args))


def _check_conv(node: Node, is_const: IsConst) -> str | None:
    a = _conv_args(node)
    rank = len(shape(a["input"]))
    if rank == 5 and (a["transposed"] or a["groups"] != 1):
        what = "transposed" if a["transposed"] else "grouped"
        return f"{what} 3d convolution (TFLite's CONV_3D is neither; 3d is written only plain)"
    if rank not in (3, 4, 5):
        return f"{rank - 2}d convolution (1d, 2d and 3d are supported)"
    if not is_const(a["weight"]) or (a["bias"] is not None and not is_const(a["bias"])):
        return "weights or bias computed at run time (they must be constants)"
    if a["transposed"]:
        if any(d != 1 for d in a["dilation"]):
            return "dilated transposed convolution"
        if any(o > p for o, p in zip(a["output_padding"], a["padding"])):
            return "output_padding larger than padding"
    return None


_CONV_WRITES = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "PAD", "SLICE"})


def _conv_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    """The 1d/2d forms; CONV_3D for a 3d one; a grouped transposed one adds its CONCATENATION."""
    a = _conv_args(node)
    if len(shape(a["input"])) == 5:
        return frozenset({"CONV_3D", "PAD"})
    return _CONV_WRITES | ({"CONCATENATION"} if a["transposed"] and a["groups"] != 1 else set())


@lowering(aten.convolution.default, writes=_conv_writes, dtypes=FLOAT, check=_check_conv, fuses_activation=True)
def convolution(em: Emitter, node: Node) -> Value:
    a = _conv_args(node)
    x = em.value(a["input"])
    weight = em.arg(a["weight"]).detach().numpy()
    bias = em.arg(a["bias"]).detach().double().numpy() if a["bias"] is not None else np.zeros(_out_channels(a, weight))
    if node in em.plan.bn_fold:
        scale, shift = bn_affine(em, em.plan.bn_fold[node])
        scale32 = scale.astype(np.float32)
        if a["transposed"]:  # weight is (I, O/g, k...): group g's rows scale its O/g outputs
            g, kernel = a["groups"], weight.shape[2:]
            grouped = weight.reshape(g, weight.shape[0] // g, weight.shape[1], *kernel)
            weight = (grouped * scale32.reshape(g, 1, -1, *(1,) * len(kernel))).reshape(weight.shape)
        else:  # (O, I/g, k...)
            weight = weight * np.expand_dims(scale32, tuple(range(1, weight.ndim)))
        bias = bias * scale + shift
    if len(x.shape) == 5:
        return _conv3d(em, node, em.to_perm(x, NDHWC), weight, bias, a)
    conv1d = len(x.shape) == 3
    if conv1d:
        x, weight = conv1d_input(em, x), weight[:, :, None, :]
    stride, pads, dilation = conv_geometry(a, conv1d)
    out_shape = tuple(meta(node).shape)
    out_shape_2d = out_shape[:2] + (1,) + out_shape[2:] if conv1d else out_shape
    x = em.to_perm(x, layout.NHWC)
    if a["transposed"]:
        y = _grouped_transpose_conv(em, node, x, weight, bias, (stride, pads, _pair(a["output_padding"], conv1d, 0)),
                                    out_shape_2d, a["groups"])
    else:
        y = _conv2d(em, node, x, weight, bias, stride, pads, dilation, a["groups"], out_shape_2d)
    return em.reshape(y, out_shape) if conv1d else y


def _out_channels(a: dict[str, Any], weight: np.ndarray) -> int:
    return weight.shape[1] * a["groups"] if a["transposed"] else weight.shape[0]


def conv1d_input(em: Emitter, x: Value) -> Value:
    """A conv1d's input (N, C, W) as the (N, C, 1, W) of the conv2d over (1, W) it runs
    as (float and int8 alike: a reshape keeps an int8 tensor's parameters)."""
    return em.reshape(em.to_perm(x, layout.NWC), x.shape[:2] + (1,) + x.shape[2:])


def conv_geometry(a: dict[str, Any], conv1d: bool) -> tuple[list[int], list[int], list[int]]:
    """(stride, padding, dilation) per (H, W); a conv1d's H is the conv2d's size-1 dim."""
    return _pair(a["stride"], conv1d, 1), _pair(a["padding"], conv1d, 0), _pair(a["dilation"], conv1d, 1)


def _pair(v: Sequence[int], conv1d: bool, fill: int) -> list[int]:
    """Per-(H, W) values; a conv1d runs as a conv2d over (1, W), so H gets `fill`."""
    return [fill, *v] if conv1d else list(v)


def _conv2d(em, node, x, weight, bias, stride, pads, dilation, groups, out_shape) -> Value:
    if em.winograd and winograd.fits(x.shape, weight.shape, stride, pads, dilation, groups):
        return winograd.conv3x3(em, node, x, weight, bias, out_shape)
    c_in, c_out = x.shape[1], weight.shape[0]
    x, options = conv2d_options(em, node, x, weight.shape[2:], (stride, pads, dilation))
    out = em.new(out_shape, torch.float32, node.name, layout.NHWC)
    b = em.weight(bias, node.name + "/bias")
    if groups == c_in and groups > 1 and c_out % c_in == 0:
        w = em.weight(weight.transpose(1, 2, 3, 0), node.name + "/filter")  # (1, kh, kw, O)
        options["DepthMultiplier"] = c_out // c_in
        em.op("DEPTHWISE_CONV_2D", [x.tensor, w, b], [out], Options("DepthwiseConv2DOptions", options))
    else:
        w = em.weight(weight.transpose(0, 2, 3, 1), node.name + "/filter")  # (O, kh, kw, I/groups)
        em.op("CONV_2D", [x.tensor, w, b], [out], Options("Conv2DOptions", options))
    return out


def conv2d_options(em: Emitter, node: Node, x: Value, kernel: Sequence[int],
                   geometry: tuple[list[int], list[int], list[int]]) -> tuple[Value, dict[str, Any]]:
    """The input and the CONV_2D / DEPTHWISE_CONV_2D options of a convolution of
    `geometry` (stride, padding, dilation), for the float and the int8 lowering alike.
    Where TFLite's SAME or VALID cannot say torch's padding, the input is padded
    explicitly first (XNNPACK's subgraph optimizer folds a PAD of zeros, or of the
    zero point, into the convolution that reads it)."""
    stride, pads, dilation = geometry
    mode = padding_mode(x.shape[2:], kernel, stride, dilation, pads)
    if mode is None:
        x, mode = _pad_spatial(em, node, x, pads, 0.0), "VALID"
    return x, {
        "Padding": getattr(tfl().Padding, mode),
        "StrideH": stride[0],
        "StrideW": stride[1],
        "DilationHFactor": dilation[0],
        "DilationWFactor": dilation[1],
        "FusedActivationFunction": em.activation(node),
    }


NDHWC = (0, 2, 3, 4, 1)  # physical (N, D, H, W, C) of a logical (N, C, D, H, W)


def _conv3d(em: Emitter, node: Node, x: Value, weight: np.ndarray, bias: np.ndarray, a: dict[str, Any]) -> Value:
    """CONV_3D (groups 1): NDHWC input, a (kd, kh, kw, I, O) filter. LiteRT runs it with
    its own kernel (XNNPACK has no 3d convolution)."""
    stride, pads, dilation = list(a["stride"]), list(a["padding"]), list(a["dilation"])
    mode = padding_mode(x.shape[2:], weight.shape[2:], stride, dilation, pads)
    if mode is None:
        x, mode = _pad_spatial(em, node, x, pads, 0.0), "VALID"
    options = {
        "Padding": getattr(tfl().Padding, mode),
        "StrideD": stride[0], "StrideH": stride[1], "StrideW": stride[2],
        "DilationDFactor": dilation[0], "DilationHFactor": dilation[1], "DilationWFactor": dilation[2],
        "FusedActivationFunction": em.activation(node),
    }  # fmt: skip
    out = em.new(tuple(meta(node).shape), torch.float32, node.name, NDHWC)
    w = em.weight(weight.transpose(2, 3, 4, 1, 0), node.name + "/filter")  # (kd, kh, kw, I, O)
    em.op("CONV_3D", [x.tensor, w, em.weight(bias, node.name + "/bias")], [out], Options("Conv3DOptions", options))
    return out


def _grouped_transpose_conv(em, node, x, weight, bias, geometry, out_shape, groups: int) -> Value:
    """TRANSPOSE_CONV has no groups: each group's input channels are SLICEd, convolved
    alone with its (I/g, O/g, k...) weights, and the outputs CONCATENATEd (channels are
    NHWC's last axis)."""
    if groups == 1:
        return _transpose_conv(em, node, x, weight, bias, *geometry, out_shape, node.name)
    c_in, c_out = x.shape[1] // groups, out_shape[1] // groups
    parts = []
    for g in range(groups):
        part = em.new((x.shape[0], c_in, *x.shape[2:]), x.dtype, f"{node.name}/in{g}", layout.NHWC)
        begin = [0, 0, 0, g * c_in]
        em.op("SLICE", [x.tensor, em.int_const(begin, "begin"), em.int_const(part.physical_shape, "size")], [part])
        parts.append(_transpose_conv(em, node, part, weight[g * c_in:(g + 1) * c_in], bias[g * c_out:(g + 1) * c_out],
                                     *geometry, (out_shape[0], c_out, *out_shape[2:]), f"{node.name}/g{g}"))
    out = em.new(out_shape, torch.float32, node.name, layout.NHWC)
    em.op("CONCATENATION", [p.tensor for p in parts], [out], Options("ConcatenationOptions", {"Axis": 3}))
    return out


def _transpose_conv(em, node, x, weight, bias, stride, pads, output_padding, out_shape, name: str) -> Value:
    """TRANSPOSE_CONV computes the full (unpadded) output; torch's padding crops it."""
    kh, kw = weight.shape[2:]
    full = (out_shape[0], out_shape[1], (x.shape[2] - 1) * stride[0] + kh, (x.shape[3] - 1) * stride[1] + kw)
    cropped = any(pads) or any(output_padding)
    y = em.new(full, torch.float32, name + ("/full" if cropped else ""), layout.NHWC)
    w = em.weight(weight.transpose(1, 2, 3, 0), name + "/filter")  # (O, kh, kw, I)
    b = em.weight(bias, name + "/bias")
    options = {
        "Padding": tfl().Padding.VALID,
        "StrideH": stride[0],
        "StrideW": stride[1],
        "FusedActivationFunction": em.activation(node),
    }
    sizes = em.int_const(y.physical_shape, "output_shape")
    em.op("TRANSPOSE_CONV", [sizes, w, x.tensor, b], [y], Options("TransposeConvOptions", options))
    if not cropped:
        return y
    out = em.new(out_shape, torch.float32, name, layout.NHWC)
    begin = [0, pads[0], pads[1], 0]
    em.op("SLICE", [y.tensor, em.int_const(begin, "begin"), em.int_const(out.physical_shape, "size")], [out])
    return out


# -- batch norm ---------------------------------------------------------------------------


def bn_affine(em: Emitter, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel of an inference batch norm, in float64."""
    weight, bias, mean, var = (em.arg(a) for a in bn.args[1:5])
    eps = float(bn.args[6])
    var = var.double().numpy()
    scale = 1.0 / np.sqrt(var + eps)
    if weight is not None:
        scale = scale * weight.double().numpy()
    shift = -mean.double().numpy() * scale
    if bias is not None:
        shift = shift + bias.double().numpy()
    return scale, shift


def _check_bn(node: Node, is_const: IsConst) -> str | None:
    if any(isinstance(a, Node) and not is_const(a) for a in node.args[1:5]):
        return "statistics or affine parameters computed at run time"
    if len(shape(node.args[0])) < 2:
        return "input without a channel dim"
    return None


@lowering(aten._native_batch_norm_legit_no_training.default, writes=frozenset({"MUL", "ADD"}), dtypes=FLOAT,
          check=_check_bn, outputs=(0,))
def batch_norm(em: Emitter, node: Node) -> tuple[Value]:
    """A batch norm not folded into a conv: x * scale + shift per channel (dim 1)."""
    x = em.value(node.args[0])
    scale, shift = bn_affine(em, node)
    channel = (-1,) + (1,) * (len(x.shape) - 2)  # per channel, broadcast over (N, C, ...)
    scale_t, shift_t = (torch.from_numpy(v.astype(np.float32).reshape(channel)) for v in (scale, shift))
    scaled = em.elementwise("MUL", [x, scale_t], x.shape, torch.float32, node.name + "/scaled")
    return (em.elementwise("ADD", [scaled, shift_t], x.shape, torch.float32, node.name),)


# -- pooling ------------------------------------------------------------------------------


def _pool_args(node: Node) -> tuple[list[int], list[int], list[int]]:
    kernel = list(node.args[1])
    kernel = kernel * 2 if len(kernel) == 1 else kernel
    stride = list(node.args[2]) if len(node.args) > 2 and node.args[2] else kernel
    stride = stride * 2 if len(stride) == 1 else stride
    pads = list(node.args[3]) if len(node.args) > 3 else [0, 0]
    pads = pads * 2 if len(pads) == 1 else pads
    return kernel, stride, pads


def _floor_out(node: Node) -> bool:
    """True when the node's output size is the floor-mode one (ceil_mode changes nothing)."""
    kernel, stride, pads = _pool_args(node)
    sizes = shape(node.args[0])[2:]
    out = list(meta(node)[0].shape[2:] if isinstance(meta(node), (list, tuple)) else meta(node).shape[2:])
    return out == [(n + 2 * p - k) // s + 1 for n, k, s, p in zip(sizes, kernel, stride, pads)]


def _check_max_pool(node: Node, is_const: IsConst) -> str | None:
    dilation = node.args[4] if len(node.args) > 4 else [1]
    if any(d != 1 for d in dilation):
        return "dilated pooling (TFLite's MAX_POOL_2D has no dilation)"
    if len(shape(node.args[0])) != 4:
        return "input is not 4d (N, C, H, W)"
    if not _floor_out(node):
        return "ceil_mode changes the output size"
    return None


_MAX_POOL_WRITES = frozenset({"MAX_POOL_2D", "PAD", "PADV2"})


@lowering(aten.max_pool2d_with_indices.default, writes=_MAX_POOL_WRITES, dtypes=FLOAT, check=_check_max_pool,
          outputs=(0,), fuses_activation=True)
def max_pool2d_with_indices(em: Emitter, node: Node) -> tuple[Value]:
    return (max_pool2d(em, node),)


@lowering(aten.max_pool2d.default, writes=_MAX_POOL_WRITES, dtypes=FLOAT, check=_check_max_pool, fuses_activation=True)
def max_pool2d(em: Emitter, node: Node) -> Value:
    # Padding with 0 equals padding with -inf after a ReLU, and a zero PAD fuses into
    # XNNPACK's pooling while a PADV2 stays outside the delegate.
    pad_value = 0.0 if _nonnegative(em, node.args[0]) else -math.inf
    return _pool(em, node, "MAX_POOL_2D", pad_value)


def _nonnegative(em: Emitter, arg: Node) -> bool:
    """True when `arg` is the output of a ReLU/ReLU6 (standalone or fused into its producer)."""
    src = em.plan.alias.get(arg, arg)
    if em.plan.fused.get(src) in ("RELU", "RELU6"):
        return True
    entry = lookup(src.target)
    return entry is not None and entry.as_activation is not None and entry.as_activation(src) in ("RELU", "RELU6")


def _check_avg_pool(node: Node, is_const: IsConst) -> str | None:
    args = list(node.args) + [None] * (7 - len(node.args))
    if len(shape(node.args[0])) != 4:
        return "input is not 4d (N, C, H, W)"
    if args[6] is not None:
        return "divisor_override"
    if not _floor_out(node):
        return "ceil_mode changes the output size"
    kernel, stride, pads = _pool_args(node)
    count_include_pad = True if args[5] is None else args[5]
    if any(pads) and not count_include_pad and padding_mode(shape(node.args[0])[2:], kernel, stride, [1, 1], pads) != "SAME":
        return "count_include_pad=False with padding TFLite's SAME rule does not reproduce"
    return None


@lowering(aten.avg_pool2d.default, writes=frozenset({"AVERAGE_POOL_2D", "PAD"}), dtypes=FLOAT, check=_check_avg_pool,
          fuses_activation=True)
def avg_pool2d(em: Emitter, node: Node) -> Value:
    count_include_pad = node.args[5] if len(node.args) > 5 else True
    return _pool(em, node, "AVERAGE_POOL_2D", pad_value=0.0 if count_include_pad else None)


def _pool(em: Emitter, node: Node, name: str, pad_value: float | None) -> Value:
    """A 2d pool; padding is SAME when exact, else an explicit pad with `pad_value`."""
    kernel, stride, pads = _pool_args(node)
    x = em.to_perm(em.value(node.args[0]), layout.NHWC)
    mode = padding_mode(x.shape[2:], kernel, stride, [1, 1], pads)
    if mode is None or (mode == "SAME" and pad_value == 0.0):
        x, mode = _pad_spatial(em, node, x, pads, pad_value), "VALID"
    return pool_value(em, node, name, x, kernel, stride, mode)


def pool_value(em: Emitter, node: Node, name: str, x: Value, kernel, stride, mode: str) -> Value:
    val = meta(node)
    out_shape = tuple((val[0] if isinstance(val, (list, tuple)) else val).shape)
    out = em.new(out_shape, x.dtype, node.name, layout.NHWC, x.quant)  # int8 pools keep their input's parameters
    options = {
        "Padding": getattr(tfl().Padding, mode),
        "StrideH": stride[0],
        "StrideW": stride[1],
        "FilterHeight": kernel[0],
        "FilterWidth": kernel[1],
        "FusedActivationFunction": em.activation(node),
    }
    em.op(name, [x.tensor], [out], Options("Pool2DOptions", options))
    return out


def _check_adaptive(node: Node, is_const: IsConst) -> str | None:
    sizes, out = shape(node.args[0])[2:], list(node.args[1])
    if len(sizes) != 2 or any(n % o for n, o in zip(sizes, out)):
        return f"output size {out} does not divide input size {list(sizes)}"
    return None


@lowering(aten._adaptive_avg_pool2d.default, writes=frozenset({"AVERAGE_POOL_2D"}), dtypes=FLOAT, check=_check_adaptive,
          fuses_activation=True)
def adaptive_avg_pool2d(em: Emitter, node: Node) -> Value:
    x = em.to_perm(em.value(node.args[0]), layout.NHWC)
    kernel = [n // o for n, o in zip(x.shape[2:], node.args[1])]
    return pool_value(em, node, "AVERAGE_POOL_2D", x, kernel, kernel, "VALID")


@lowering(aten.adaptive_max_pool2d.default, writes=frozenset({"MAX_POOL_2D"}), dtypes=FLOAT, check=_check_adaptive,
          outputs=(0,), fuses_activation=True)
def adaptive_max_pool2d(em: Emitter, node: Node) -> tuple[Value]:
    """Output sizes that divide the input's: windows of n // o with that stride, no
    overlap, as torch's adaptive windows are then (its indices, output 1, are not written)."""
    x = em.to_perm(em.value(node.args[0]), layout.NHWC)
    kernel = [n // o for n, o in zip(x.shape[2:], node.args[1])]
    return (pool_value(em, node, "MAX_POOL_2D", x, kernel, kernel, "VALID"),)


# -- resizing -----------------------------------------------------------------------------


def _resize_args(node: Node) -> tuple[bool, list[float] | None]:
    """(align_corners, scale_factors) of an upsample node."""
    if node.target in (aten.upsample_bilinear2d.vec, aten.upsample_nearest2d.vec):
        align = node.args[2] if node.target == aten.upsample_bilinear2d.vec else False
        scales = node.args[-1] if len(node.args) > 2 else None
        return bool(align), list(scales) if scales else None
    align = node.args[2] if node.target == aten.upsample_bilinear2d.default else False
    rest = node.args[3:] if node.target == aten.upsample_bilinear2d.default else node.args[2:]
    scales = [s for s in rest if s is not None]
    return bool(align), scales or None


def _check_resize(node: Node, is_const: IsConst) -> str | None:
    if len(shape(node.args[0])) != 4:
        return "input is not 4d (N, C, H, W)"
    align, scales = _resize_args(node)
    if scales:
        sizes, out = shape(node.args[0])[2:], meta(node).shape[2:]
        if any(abs(s * n - o) > 1e-6 or not float(s).is_integer() for s, n, o in zip(scales, sizes, out)):
            return f"scale factors {scales} are not integers matching the output size"
    return None


_RESIZE = {
    aten.upsample_nearest2d.vec: "RESIZE_NEAREST_NEIGHBOR",
    aten.upsample_nearest2d.default: "RESIZE_NEAREST_NEIGHBOR",
    aten.upsample_bilinear2d.vec: "RESIZE_BILINEAR",
    aten.upsample_bilinear2d.default: "RESIZE_BILINEAR",
}


@lowering(*_RESIZE, writes=by_target(_RESIZE), dtypes=FLOAT, check=_check_resize)
def upsample(em: Emitter, node: Node) -> Value:
    name = _RESIZE[node.target]
    align, _ = _resize_args(node)
    x = em.to_perm(em.value(node.args[0]), layout.NHWC)
    out = em.out(node, layout.NHWC)
    table = "ResizeBilinearOptions" if name == "RESIZE_BILINEAR" else "ResizeNearestNeighborOptions"
    half_pixel = name == "RESIZE_BILINEAR" and not align
    options = Options(table, {"AlignCorners": align, "HalfPixelCenters": half_pixel})
    em.op(name, [x.tensor, em.int_const(list(out.shape[2:]), "size")], [out], options)
    return out

