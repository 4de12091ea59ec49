"""3x3 stride-1 convolutions as Winograd F(2x2, 3x3), written in plain TFLite operators.

Why: XNNPACK runs a 3x3 convolution as an indirect GEMM, and LiteRT's build of that
kernel runs about 8% slower than ExecuTorch's build of the same XNNPACK kernel, which
kept ResNet-18 at 1.1x ExecuTorch's latency (bench/README.md). Winograd's minimal
filtering computes each 2x2 output tile with 16 products per channel pair instead of 36,
and its stages map onto operators XNNPACK already runs well:

    input transform   V = Bᵀ d B    one DEPTHWISE_CONV_2D (4x4 window, stride 2, 16 outputs per channel)
    products          M = V · U     one BATCH_MATMUL over the 16 tile positions (U = G g Gᵀ, precomputed)
    output transform  Y = Aᵀ M A    one FULLY_CONNECTED (16 -> 4) and a TRANSPOSE back into the image

then the bias and fused activation in a final ADD. The rounding error stays at a direct
convolution's level: F(2x2, 3x3) uses only the constants 0, ±1 and ±1/2 (the larger
F(4x4, 3x3) was tried and is ten times less accurate, so it is not used).

The transforms and layout changes cost memory traffic that small convolutions do not
earn back, so `fits` asks for at least 64 input and output channels and enough work
(measured: bench/conv_kernels.py and bench/README.md).

The filters are stored transformed (U, 16/9 the size of the 3x3 filters), not
transformed at load time. Measured on ResNet-18 (2026-11-26, bench/README.md, "Memory"):
13 convolutions fit, 36 MiB of 3x3 filters become 64 MiB, and the program is 79 MB
against 47 MB with ``cpu.winograd=false``. Transforming at load would save those 32 MB
of file, but cost every load ~0.5 s of numpy on this shared machine (0.46-0.52 s, load
average ~8) plus re-serializing the flatbuffer (its buffers change size) with a writer
the torch-free run side does not have; and it would save no memory: LiteRT's
Interpreter reads the model from ``bytes``, so the transformed model has to exist in
memory in full either way (peak RSS of ``edgeport run --repeat 20``: 412 MiB stored
transformed; at least that plus the 36 MiB being transformed at load). So they stay
stored transformed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..flatbuffer import Options
from ..schema import tfl

MIN_CHANNELS = 64
MIN_MACS = 20_000_000  # multiply-accumulates of the direct convolution

# Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), F(2, 3).
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
_G32 = _G.astype(np.float32)


def fits(
    in_shape: Sequence[int], weight_shape: Sequence[int], stride: Sequence[int], pads: Sequence[int],
    dilation: Sequence[int], groups: int,
) -> bool:
    """True for a dense 3x3, stride-1, padding-1 convolution big enough to gain."""
    c_out, c_in, kh, kw = weight_shape
    if (kh, kw) != (3, 3) or list(stride) != [1, 1] or list(pads) != [1, 1] or list(dilation) != [1, 1]:
        return False
    if groups != 1 or min(c_in, c_out) < MIN_CHANNELS:
        return False
    n, _, h, w = in_shape
    return n * h * w * c_in * c_out * 9 >= MIN_MACS


def conv3x3(em: Emitter, node: Node, x: Value, weight: np.ndarray, bias: np.ndarray, out_shape: Sequence[int]) -> Value:
    """`x` (NHWC) convolved with `weight` (O, I, 3, 3), padding 1; output NHWC of `out_shape`."""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    th, tw = (h + 1) // 2, (w + 1) // 2  # 2x2 output tiles; odd sizes compute one row/column more
    name = node.name + "/winograd"
    raw = _RawOps(em, name)

    padded = raw.op("PAD", [x.tensor, em.int_const([[0, 0], [1, 2 * th + 1 - h], [1, 2 * tw + 1 - w], [0, 0]])],
                    (n, 2 * th + 2, 2 * tw + 2, c_in))
    transform = np.einsum("iu,jv->uvij", _BT, _BT).reshape(1, 4, 4, 1, 16)  # filter of tile position (i, j)
    dw_filter = np.broadcast_to(transform, (1, 4, 4, c_in, 16)).reshape(1, 4, 4, c_in * 16)
    v = raw.op("DEPTHWISE_CONV_2D", [padded, em.weight(dw_filter, name + "/input_transform"),
                                     em.weight(np.zeros(c_in * 16), name + "/zero_bias")],
               (n, th, tw, c_in * 16), Options("DepthwiseConv2DOptions", {
                   "Padding": tfl().Padding.VALID, "StrideH": 2, "StrideW": 2, "DepthMultiplier": 16,
                   "DilationHFactor": 1, "DilationWFactor": 1}))
    tiles = n * th * tw
    v = raw.transpose(raw.reshape(v, (tiles, c_in, 16)), (2, 0, 1), (16, tiles, c_in))

    g = np.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(3, -1)  # (u, v·I·O)
    g = (_G32 @ g).reshape(4, 3, -1)  # (i, v, I·O): G g
    u = (_G32 @ g).reshape(16, c_in, c_out)  # (i·j, I, O): G g Gᵀ, one matmul per i
    m = raw.op("BATCH_MATMUL", [v, em.weight(u, name + "/filter")], (16, tiles, c_out),
               Options("BatchMatMulOptions", {"AdjX": False, "AdjY": False}))

    m = raw.reshape(raw.transpose(m, (1, 2, 0), (tiles, c_out, 16)), (tiles * c_out, 16))
    output_transform = np.einsum("ai,bj->abij", _AT, _AT).reshape(4, 16)
    y = raw.op("FULLY_CONNECTED", [m, em.weight(output_transform, name + "/output_transform"),
                                   em.weight(np.zeros(4), name + "/zero_bias4")],
               (tiles * c_out, 4), Options("FullyConnectedOptions", {}))
    y = raw.transpose(raw.reshape(y, (n * th, tw, c_out, 2, 2)), (0, 3, 1, 4, 2), (n * th, 2, tw, 2, c_out))
    y = raw.reshape(y, (n, 2 * th, 2 * tw, c_out))
    if (2 * th, 2 * tw) != (h, w):
        y = raw.op("SLICE", [y, em.int_const([0, 0, 0, 0]), em.int_const([n, h, w, c_out])], (n, h, w, c_out))

    out = em.new(out_shape, torch.float32, node.name, layout.NHWC)
    options = Options("AddOptions", {"FusedActivationFunction": em.activation(node)})
    em.op("ADD", [y, em.weight(bias, node.name + "/bias")], [out], options)
    return out


class _RawOps:
    """Operators on plain tensors (physical shapes, no logical layout) inside one lowering."""

    def __init__(self, em: Emitter, name: str) -> None:
        self.em, self.name, self.count = em, name, 0

    def op(self, op: str, inputs: list[int], shape: Sequence[int], options: Options | None = None) -> int:
        self.count += 1
        out = self.em.new(shape, torch.float32, f"{self.name}/{self.count}")
        self.em.op(op, inputs, [out], options)
        return out.tensor

    def reshape(self, t: int, shape: Sequence[int]) -> int:
        return self.op("RESHAPE", [t, self.em.int_const(shape)], shape)

    def transpose(self, t: int, perm: Sequence[int], shape: Sequence[int]) -> int:
        return self.op("TRANSPOSE", [t, self.em.int_const(perm, "perm")], shape)
