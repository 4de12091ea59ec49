"""RMS norms as one native norm node, which QNN HTP computes right where the chain is not.

torch.onnx writes an RMS norm (torch's ``rms_norm``, Hugging Face's ``x * rsqrt(mean(x **
2) + eps) * w``, edgeport's own decoders) as ``Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x,
2)), eps))))``, then a Mul by the weight. On HTP (onnxruntime-qnn 2.7.0, QNN's HTP
simulator) that chain runs in fp16: the squares overflow beyond |x| = 256 (65504), and
HTP's fusions of it are right for some inputs and wrong for others (OpInfo's rms_norm
sample, values near 800: error 1.0; the norm of ``x + 0.5``). ONNX Runtime's
``SimplifiedLayerNormalization`` (its contrib RMS norm, in the ONNX domain, any opset)
becomes QNN's native RmsNorm, which accumulates safely: max error ~0.002 against float64
for x ~ N(0.5, 1000) over 576 channels in fp16.

So each such chain whose mean runs over the input's trailing axes (keepdims) becomes
``SimplifiedLayerNormalization(x, scale, axis=first trailing axis, epsilon=eps)``. The
scale is the weight the chain's result is multiplied by when that weight is a constant
that broadcasts to the normalized shape (the Mul is folded in), else ones (any other
Mul stays as it was). A chain over other axes, or one whose intermediates something else
reads, stays as torch.onnx wrote it.

In a quantized (QDQ) partition x reaches the Pow and the Mul through two dequantizes of
one quantize, and every intermediate is quantized: those intermediates go with the chain
(the native node has none, so neither does the fake-quantized reference), and the
weight's dequantize feeds the node's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .provenance import record_fused

NATIVE_NORM = "SimplifiedLayerNormalization"


@dataclass(frozen=True)
class _Chain:
    """One matched norm: the ONNX nodes it replaces, its input x (its shape, the first
    normalized axis), eps, its scale (a constant array, or the name of a quantized
    weight's dequantized value, or None for ones) and the value it writes (the weight
    Mul's output when the weight is folded in). `quantized`: x comes from a dequantize."""

    nodes: list[Any]
    x: str
    shape: tuple[int, ...]
    first_axis: int
    eps: float
    scale: Any
    output: str
    quantized: bool

    @property
    def width(self) -> int:
        """How many values each norm averages (the normalized axes' sizes multiplied)."""
        return int(math.prod(self.shape[self.first_axis:]))


def fuse_rms_norms(model: Any) -> int:
    """Replace every matched RMS norm chain by one native norm node, in place (an
    onnx.ModelProto); return how many were replaced."""
    graph = model.graph
    chains = _find_chains(model)
    for index, chain in enumerate(chains):
        name = f"rms_norm_{index}"
        scale, scale_nodes = _scale(chain, name, graph)
        nodes = [*scale_nodes, *_native_nodes(chain, scale, name, graph)]
        for node in nodes:
            node.metadata_props.extend(chain.nodes[-1].metadata_props)
            if node.op_type == NATIVE_NORM:
                record_fused(node, chain.nodes)  # QNN's word on the node holds for the whole chain
        position = min(_position(graph, node) for node in chain.nodes)
        for node in chain.nodes:
            graph.node.remove(node)
        for offset, node in enumerate(nodes):
            graph.node.insert(position + offset, node)
    return len(chains)


def _scale(chain: _Chain, name: str, graph: Any) -> tuple[str, list[Any]]:
    """The norm's scale input, and the nodes computing it. Float: the weight (or ones)
    as one flat initializer (see _native_nodes). Quantized: the weight's dequantize, or
    ones dequantized from uint8 at scale 1 (exact), since QNN takes the norm quantized
    only with a quantized scale."""
    import numpy as np
    from onnx import helper, numpy_helper

    if isinstance(chain.scale, str):
        return chain.scale, []
    scale = f"{name}_scale"
    if not chain.quantized:
        values = chain.scale if chain.scale is not None else np.ones(chain.width, np.float32)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values, np.float32).reshape(-1), scale))
        return scale, []
    graph.initializer.extend([
        numpy_helper.from_array(np.ones(chain.width, np.uint8), f"{scale}_q"),
        numpy_helper.from_array(np.array(1.0, np.float32), f"{scale}_step"),
        numpy_helper.from_array(np.array(0, np.uint8), f"{scale}_zero"),
    ])
    return scale, [helper.make_node("DequantizeLinear", [f"{scale}_q", f"{scale}_step", f"{scale}_zero"], [scale],
                                    name=f"{name}_ones")]


def _position(graph: Any, node: Any) -> int:
    return next(i for i, other in enumerate(graph.node) if other is node)


def _native_nodes(chain: _Chain, scale: str, name: str, graph: Any) -> list[Any]:
    """The native norm of ``chain``; over several axes, of x reshaped to one trailing
    axis and back (HTP's RmsNorm takes the last axis only: "QNN RMSNorm for NPU backend
    only supports axis with last input dimension"). The mean over the flattened axes is
    the mean over the axes, so the reshape is exact."""
    import numpy as np
    from onnx import helper, numpy_helper

    if len(chain.shape) - chain.first_axis == 1:
        return [helper.make_node(NATIVE_NORM, [chain.x, scale], [chain.output], name=name, axis=chain.first_axis,
                                 epsilon=chain.eps, stash_type=1)]
    flat_shape, shape = f"{name}_flat_shape", f"{name}_shape"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([*chain.shape[:chain.first_axis], -1], np.int64), flat_shape),
        numpy_helper.from_array(np.array(chain.shape, np.int64), shape),
    ])
    return [
        helper.make_node("Reshape", [chain.x, flat_shape], [f"{name}_flat"], name=f"{name}_flatten"),
        helper.make_node(NATIVE_NORM, [f"{name}_flat", scale], [f"{name}_normed"], name=name,
                         axis=chain.first_axis, epsilon=chain.eps, stash_type=1),
        helper.make_node("Reshape", [f"{name}_normed", shape], [chain.output], name=f"{name}_unflatten"),
    ]


class _Graph:
    """Lookups over an ONNX graph: constants, producers, readers, static shapes."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        graph = model.graph
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.readers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in graph.output}
        self.shapes = static_shapes(model)

    def only_reader(self, name: str, op_type: str) -> Any:
        """The one node reading ``name`` if it is an ``op_type`` and ``name`` is no graph output."""
        found = self.readers.get(name, [])
        if name in self.outputs or len(found) != 1 or found[0].op_type != op_type:
            return None
        return found[0]

    def dequantized(self, name: str) -> tuple[Any, ...] | None:
        """What a dequantize writing ``name`` computes, as a comparable key (the tensor it
        reads, or the float one a quantize read, and the parameters' values); None if no
        dequantize writes it."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        source = self.producer.get(node.input[0])
        if source is not None and source.op_type == "QuantizeLinear":
            origin = ("quantized", source.input[0], *(self._value(n) for n in source.input[1:]))
        else:
            origin = (node.input[0],)
        return (*origin, *(self._value(n) for n in node.input[1:]), _attributes(node).get("axis", 1))

    def _value(self, name: str) -> Any:
        value = self.constants.get(name)
        return None if value is None else (str(value.dtype), value.tobytes())

    def same_value(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` hold the same tensor (one name, or two dequantizes of it)."""
        return a == b or (self.dequantized(a) is not None and self.dequantized(a) == self.dequantized(b))


def _find_chains(model: Any) -> list[_Chain]:
    graph = _Graph(model)
    chains = []
    for mean in model.graph.node:
        if mean.op_type == "ReduceMean" and _keeps_dims(mean):
            chain = _chain_from(mean, graph)
            if chain is not None:
                chains.append(chain)
    return chains


def _chain_from(mean: Any, graph: _Graph) -> _Chain | None:
    """The norm whose mean of squares ``mean`` is, if the whole chain matches."""
    square = graph.producer.get(mean.input[0])
    x = _squared(square, graph.constants)
    add = graph.only_reader(mean.output[0], "Add")
    if x is None or add is None or graph.only_reader(square.output[0], "ReduceMean") is None:
        return None
    eps = _scalar(graph.constants.get(add.input[1] if add.input[0] == mean.output[0] else add.input[0]))
    sqrt = graph.only_reader(add.output[0], "Sqrt")
    reciprocal = sqrt and graph.only_reader(sqrt.output[0], "Reciprocal")
    normalize = reciprocal and graph.only_reader(reciprocal.output[0], "Mul")
    shape = graph.shapes.get(x)
    if eps is None or normalize is None or shape is None or reciprocal.output[0] not in normalize.input:
        return None
    other_x = normalize.input[1] if normalize.input[0] == reciprocal.output[0] else normalize.input[0]
    if not graph.same_value(other_x, x):
        return None
    first_axis = _trailing_from(_axes(mean, graph.constants), len(shape))
    if first_axis is None:
        return None
    nodes = [square, mean, add, sqrt, reciprocal, normalize]
    if other_x != x and graph.only_reader(other_x, "Mul") is normalize:  # a second dequantize of x
        nodes.append(graph.producer[other_x])
    quantized = graph.dequantized(x) is not None
    scale, output = None, normalize.output[0]
    scaling = graph.only_reader(output, "Mul")
    if scaling is not None:
        weight = scaling.input[1] if scaling.input[0] == output else scaling.input[0]
        scale = (_quantized_weight(weight, graph, shape[first_axis:]) if quantized
                 else _broadcast_weight(graph.constants.get(weight), shape[first_axis:]))
        if scale is not None:
            nodes.append(scaling)
            output = scaling.output[0]
    return _Chain(nodes, x, shape, first_axis, eps, scale, output, quantized)


def _quantized_weight(name: str, graph: _Graph, normalized_shape: tuple[int, ...]) -> str | None:
    """``name`` if a per-tensor dequantize of a constant of the normalized shape (one
    axis) writes it: the native norm reads it as its scale."""
    node = graph.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or len(normalized_shape) != 1:
        return None
    weight, scale = graph.constants.get(node.input[0]), graph.constants.get(node.input[1])
    if weight is None or scale is None or scale.size != 1:
        return None
    return name if tuple(weight.shape) == tuple(normalized_shape) else None


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _squared(node: Any, constants: dict[str, Any]) -> str | None:
    """The base of ``Pow(base, 2)`` or ``Mul(base, base)``, else None."""
    if node is None:
        return None
    if node.op_type == "Pow" and _scalar(constants.get(node.input[1])) == 2.0:
        return node.input[0]
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    return None


def _scalar(value: Any) -> float | None:
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _keeps_dims(mean: Any) -> bool:
    attributes = _attributes(mean)
    return attributes.get("keepdims", 1) == 1 and attributes.get("noop_with_empty_axes", 0) == 0


def _axes(mean: Any, constants: dict[str, Any]) -> list[int] | None:
    """The ReduceMean's axes (an input from opset 18, an attribute before), None if
    unknown or empty (every axis: also trailing, but rare; left as it is)."""
    if len(mean.input) > 1 and mean.input[1]:
        value = constants.get(mean.input[1])
        return None if value is None or value.size == 0 else [int(a) for a in value.reshape(-1)]
    attributes = _attributes(mean)
    return list(attributes["axes"]) if attributes.get("axes") else None


def _trailing_from(axes: list[int] | None, rank: int) -> int | None:
    """The first axis if ``axes`` are the last len(axes) axes of a rank-``rank`` tensor."""
    if not axes:
        return None
    normalized = sorted({a % rank for a in axes})
    return normalized[0] if normalized == list(range(rank - len(normalized), rank)) else None


def _broadcast_weight(weight: Any, normalized_shape: tuple[int, ...]) -> Any:
    """``weight`` as an array of ``normalized_shape``, if it is a float constant that
    broadcasts to it without adding leading dims beyond it; else None."""
    import numpy as np

    if weight is None or weight.dtype != np.float32:
        return None
    dims = list(weight.shape)
    while len(dims) > len(normalized_shape) and dims[0] == 1:
        dims.pop(0)
    if len(dims) > len(normalized_shape):
        return None
    try:
        return np.broadcast_to(weight.reshape(dims), normalized_shape)
    except ValueError:
        return None


def static_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Each value's shape where every dim is a known number (the exporter writes
    value_info; graph inputs have theirs)."""
    graph = model.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes
