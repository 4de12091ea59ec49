"""Pooling in the one form QNN HTP computes right: the padding concatenated as constants,
an unpadded floor-mode pool, and for averages a constant per-position divisor correction.

QNN HTP (onnxruntime-qnn 2.7.0, QNN's HTP simulator) returns wrong values, often garbage
(SQNR from 25 dB down to below 0 dB against torch), for pools that pad themselves:

- AveragePool with ``ceil_mode`` adding a partial window at the end; with padding and
  ``count_include_pad=False`` (stride 1 always, stride 2 often); with padding and an even
  kernel (k2 at strides 1 and 2, k4 at stride 1), even with ``count_include_pad=True``;
- MaxPool whose last strided window reaches into the trailing padding (k2/s2/p1 on an
  even size: the last output column is wrong), or past the end in ceil mode.

The very same ONNX nodes run exactly on ONNX Runtime's CPU EP, so torch.onnx is right and
QNN is wrong. An explicit ONNX ``Pad`` before an unpadded pool does not help: QNN folds
it back into the pool (a Pad of (0, 2) before a k3/s3 pool over 100 values comes back at
14 dB). Constant blocks joined with ``Concat`` are not folded: over 450 explicit-padding
configurations (kernel 2-5, stride 1-3, leading pad 0-2, trailing pad 0-3, 1-d and 2-d,
sizes 20, 21 and 100, 8 channels) both pools came back within fp16 error.

The rewrite is exact: averaging a zero-padded window gives its sum / (kernel volume), and
multiplying by (kernel volume / torch's divisor) gives torch's average, where torch's
divisor counts the window clipped to the padded input (``count_include_pad=True``) or
its real elements (``False``). A max over a window padded with the dtype's lowest value
is the max over its real elements. The cost is one copy of the pool's input on device.

In a quantized graph a max pool reads a DequantizeLinear and feeds a QuantizeLinear.
Float padding blocks there made QNN build the Concat and the pool in float (ResNet-18's
stem pool, k3/s2/p1, in int8 and a16w8). There the blocks are the integer grid's lowest
step, dequantized with the input's parameters, and the Concat is quantized with them
too: every padded value is at most every real one, and QNN runs both ops quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import edgeport

_POOLS = ("AveragePool", "MaxPool")
_SUFFIX = "_edgeport"


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a pool: input size, kernel, stride, pads, output size."""

    size: int
    kernel: int
    stride: int
    begin: int
    end: int
    out: int

    @property
    def trailing(self) -> int:
        """Padding after the input: the pool's own, plus what a ceil-mode window reaches."""
        return max(self.end, (self.out - 1) * self.stride + self.kernel - (self.begin + self.size))

    def divisors(self, count_include_pad: bool) -> np.ndarray:
        """torch's divisor for each output position along this axis."""
        start = np.arange(self.out) * self.stride - self.begin
        stop = start + self.kernel
        if count_include_pad:
            return np.minimum(stop, self.size + self.end) - start
        return np.minimum(stop, self.size) - np.maximum(start, 0)


def rewrite_pools(model: Any) -> int:
    """Rewrite, in place, every pool of ``model`` that pads itself; returns how many."""
    from onnx import shape_inference

    graph = model.graph
    targets = [i for i, node in enumerate(graph.node) if node.op_type in _POOLS and _pads_itself(node)]
    if not targets:
        return 0
    types = _value_types(shape_inference.infer_shapes(model).graph)
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    for index in reversed(targets):  # later indices first, so earlier ones stay valid
        node = graph.node[index]
        replacement, constants = _explicit(node, types, _input_grid(node, producer, initializers))
        del graph.node[index]
        for offset, new in enumerate(replacement):
            graph.node.insert(index + offset, new)
        graph.initializer.extend(constants)
    return len(targets)


def _pads_itself(node: Any) -> bool:
    attrs = _attributes(node)
    auto_pad = attrs.get("auto_pad", b"NOTSET") != b"NOTSET"
    return any(attrs.get("pads", [])) or bool(attrs.get("ceil_mode", 0)) or auto_pad


@dataclass
class _Replacement:
    """The nodes and constants replacing one pool node, each node keeping the pool's
    provenance (which maps ONNX nodes back to the aten node)."""

    pool: Any  # the onnx.NodeProto replaced
    dtype: np.dtype
    grid: _Grid | None = None  # a max pool's quantized input: pad on its integer grid
    nodes: list[Any] = field(default_factory=list)
    constants: list[Any] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"{self.pool.name or self.pool.output[0]}{_SUFFIX}"

    def constant(self, suffix: str, value: np.ndarray, dtype: np.dtype | None = None) -> str:
        from onnx import numpy_helper

        name = f"{self.prefix}_{suffix}"
        self.constants.append(numpy_helper.from_array(value.astype(dtype or self.dtype), name))
        return name

    def add(self, op: str, inputs: list[str], output: str, suffix: str, **attributes: Any) -> str:
        from onnx import helper

        node = helper.make_node(op, inputs, [output], name=f"{self.prefix}_{suffix}", **attributes)
        node.metadata_props.extend(self.pool.metadata_props)
        self.nodes.append(node)
        return output

    def pad(self, source: str, shape: list[int], i: int, axis: _Axis, fill: float) -> str:
        """``source`` with constant blocks of ``fill`` joined before/after spatial axis
        ``i``; ``shape`` is updated to the padded shape."""
        if not axis.begin and not axis.trailing:
            return source
        dim = 2 + i
        parts = [source]
        for where, width in (("before", axis.begin), ("after", axis.trailing)):
            if width:
                block = list(shape)
                block[dim] = width
                name = self.constant(f"pad{i}_{where}", np.full(block, fill)) if self.grid is None \
                    else self.grid.lowest(self, f"pad{i}_{where}", block)
                parts.insert(0 if where == "before" else len(parts), name)
        shape[dim] += axis.begin + axis.trailing
        padded = self.add("Concat", parts, f"{self.prefix}_padded{i}", f"concat{i}", axis=dim)
        return padded if self.grid is None else self.grid.requantize(self, padded, f"padded{i}")


@dataclass(frozen=True)
class _Grid:
    """The per-tensor quantization parameters of a max pool's input (initializer names)."""

    scale: str
    zero_point: str
    dtype: np.dtype

    def lowest(self, built: _Replacement, suffix: str, shape: list[int]) -> str:
        """A block of the grid's lowest step, dequantized: at most every value on the grid."""
        low = np.full(shape, np.iinfo(self.dtype).min)
        block = built.constant(suffix, low, self.dtype)
        return built.add("DequantizeLinear", [block, self.scale, self.zero_point], f"{block}_dq", f"{suffix}_dq")

    def requantize(self, built: _Replacement, value: str, suffix: str) -> str:
        """``value`` (on the grid already) through a QuantizeLinear and a DequantizeLinear
        of these parameters, so QNN quantizes the op producing it."""
        q = built.add("QuantizeLinear", [value, self.scale, self.zero_point], f"{value}_q", f"{suffix}_q")
        return built.add("DequantizeLinear", [q, self.scale, self.zero_point], f"{value}_dq", f"{suffix}_dq")


def _input_grid(pool: Any, producer: dict[str, Any], initializers: dict[str, Any]) -> _Grid | None:
    """A max pool's input grid, when it reads a per-tensor DequantizeLinear."""
    from onnx import helper

    dequantize = producer.get(pool.input[0])
    if pool.op_type != "MaxPool" or dequantize is None or dequantize.op_type != "DequantizeLinear":
        return None
    params = list(dequantize.input[1:3])
    if len(params) != 2 or any(p not in initializers or np.prod(initializers[p].dims) != 1 for p in params):
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(initializers[params[1]].data_type))
    return _Grid(*params, dtype) if np.issubdtype(dtype, np.integer) else None


def _explicit(pool: Any, types: dict[str, Any], grid: _Grid | None) -> tuple[list[Any], list[Any]]:
    """Concat padding + unpadded pool (+ divisor Mul) computing what ``pool`` computes."""
    attrs = _attributes(pool)
    shape, dtype = _shape_and_dtype(types, pool.input[0], pool)
    axes = _axes(pool, attrs, shape)
    average = pool.op_type == "AveragePool"
    built = _Replacement(pool, dtype, grid)
    current = pool.input[0]
    for i, axis in enumerate(axes):
        current = built.pad(current, shape, i, axis, fill=0.0 if average else float(np.finfo(dtype).min))
    scale = _scale(axes, bool(attrs.get("count_include_pad", 0))) if average else np.ones(())
    exact = bool(np.all(scale == 1.0))
    target = pool.output[0]
    pooled = built.add(pool.op_type, [current], target if exact else f"{built.prefix}_mean", "pool",
                       kernel_shape=[a.kernel for a in axes], strides=[a.stride for a in axes])
    if not exact:
        built.add("Mul", [pooled, built.constant("scale", scale.reshape((1, 1, *scale.shape)))], target, "divisor")
    return built.nodes, built.constants


def _axes(node: Any, attrs: dict[str, Any], shape: list[int]) -> list[_Axis]:
    kernel = list(attrs["kernel_shape"])
    spatial = len(kernel)
    stride = list(attrs.get("strides", [1] * spatial))
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    unsupported = (attrs.get("auto_pad", b"NOTSET") != b"NOTSET" or len(node.output) > 1
                   or any(d != 1 for d in attrs.get("dilations", [1] * spatial)))
    if unsupported:
        raise edgeport.BackendError(
            f"qualcomm: cannot rewrite {node.op_type} {node.name} (auto_pad, dilations or indices output set)",
            hint="torch.onnx does not emit these for a pool the qualcomm support table accepts; report the graph",
        )
    ceil = bool(attrs.get("ceil_mode", 0))
    axes = []
    for i, size in enumerate(shape[2:]):
        begin, end = pads[i], pads[i + spatial]
        axes.append(_Axis(size, kernel[i], stride[i], begin, end,
                          _out_size(size, kernel[i], stride[i], begin, end, ceil)))
    return axes


def _out_size(size: int, kernel: int, stride: int, begin: int, end: int, ceil: bool) -> int:
    """Output length by torch's rule: in ceil mode the last window must start inside the
    input or its leading padding."""
    span = size + begin + end - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def _scale(axes: list[_Axis], count_include_pad: bool) -> np.ndarray:
    """kernel volume / torch's divisor, per output position (separable over axes)."""
    scale = np.ones((), dtype=np.float64)
    for axis in axes:
        scale = np.multiply.outer(scale, axis.kernel / axis.divisors(count_include_pad))
    return scale


def _shape_and_dtype(types: dict[str, Any], name: str, node: Any) -> tuple[list[int], np.dtype]:
    from onnx import helper

    value = types.get(name)
    dims = list(value.type.tensor_type.shape.dim) if value is not None else []
    if not dims or not all(d.HasField("dim_value") for d in dims):
        raise edgeport.BackendError(
            f"qualcomm: the input of {node.op_type} {node.name} has no static shape",
            hint="QNN graphs are static: export with static shapes",
        )
    return [d.dim_value for d in dims], np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def _value_types(graph: Any) -> dict[str, Any]:
    return {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
