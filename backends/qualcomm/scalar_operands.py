"""Float constants of quantized elementwise ops, given a quantized form of their own.

A quantized graph's ``x * 0.5`` (``x / 4.0``, ``x + 1.0``; an attention's scaling)
reaches ONNX as ``DQ(x) -> Mul(., c) -> Q`` with ``c`` a float initializer: the PT2E
quantizer annotates the op, but a Python number is no node it could quantize. QNN's EP
(onnxruntime-qnn 2.7.0) runs a node quantized only when every input it reads comes from
a DequantizeLinear; with a float constant input it builds the op in float between a
Dequantize and a Quantize instead (the graph it dumps gives the Mul a FLOAT_32 output,
`qnn_runtime._float_ops`), which HTP runs in fp16 with a conversion on either side.

This gives each such constant its own DequantizeLinear, in the integer type of the
other operand's encoding, spanning the whole type: ``q = qmax`` with zero point 0 for
``c > 0``, ``q = 0`` with zero point ``qmax`` for ``c < 0``, scale ``|c| / qmax``
(``c == 0``: ``q = 0``, zero point 0, scale 1). The dequantized constant is ``c``
within one float32 rounding, so the op reads what the fake-quantized reference reads.
(One step of size ``|c|``, ``q = 1``, is exact too, but QNN then failed to finalize a
16-bit Add of a linear's output and 1.0, QNN_COMMON_ERROR_MEM_ALLOC: the constant's
scale was 10^5 times the activation's.) A Div by a constant becomes a Mul by its
reciprocal (within one float32 rounding of the quotient, far inside a 16-bit step):
HTP multiplies quantized tensors; it need not divide them.

A Where choosing between a tensor and a number (an attention's zeros for a query masked
whole, attention.py) gets the number in the tensor's own encoding instead: QNN's
quantized Select copies its inputs' integers to its output, so a 0 in an encoding of its
own (q 0, zero point 0) came out as the output's lowest value (in attention.py's test
block, the masked query's outputs up to 0.71 off).

Measured in QNN's HTP simulator against the fake-quantized reference (2026-11-28), a
linear, then ``* 0.5 + 1.25``, ``- 0.75``, ``/ 3.0``, ``* -2.0``, then a linear: before,
those five ops ran in float; now every op runs quantized, the largest error 1.8e-5 in
a16w8 (outputs up to 0.32).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})


def quantize_scalar_operands(model: Any) -> int:
    """Give every single-element float constant read by a quantized Add/Sub/Mul/Div/Where
    its own DequantizeLinear, in place (an onnx.ModelProto); returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    rewritten = 0
    for node in [n for n in graph.node if _operands(n)]:
        found = _match(node, constants, producer, readers)
        if found is None:
            continue
        position, other = found
        value = float(numpy_helper.to_array(constants[node.input[position]]).reshape(()))
        if node.op_type == "Where":
            node.input[position] = _dequantize_in_encoding(model, node, value, other, constants)
            rewritten += 1
            continue
        if node.op_type == "Div":
            if position == 0 or value == 0:  # c / x stays a division; x / 0 is left as torch wrote it
                continue
            node.op_type, value = "Mul", float(np.float32(1) / np.float32(value))
        dtype = helper.tensor_dtype_to_np_dtype(constants[other.input[2]].data_type)
        node.input[position] = _exact_dequantize(model, node, value, dtype)
        rewritten += 1
    return rewritten


def _operands(node: Any) -> tuple[int, ...]:
    """The input positions of `node`'s two numeric operands, () for another op (a
    Where's condition is bool)."""
    if node.op_type in _ELEMENTWISE and len(node.input) == 2:
        return (0, 1)
    return (1, 2) if node.op_type == "Where" and len(node.input) == 3 else ()


def _match(node: Any, constants: dict, producer: dict, readers: dict) -> tuple[int, Any] | None:
    """(the constant's input position, the DequantizeLinear of the other operand) when
    `node` is a quantized op of one activation and one float scalar constant."""
    from onnx import TensorProto

    operands = _operands(node)
    positions = [i for i in operands if node.input[i] in constants]
    if len(positions) != 1:
        return None
    constant = constants[node.input[positions[0]]]
    if constant.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) or np.prod(constant.dims) != 1:
        return None
    (other,) = [i for i in operands if i != positions[0]]
    dequantize = producer.get(node.input[other])
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3 \
            or dequantize.input[2] not in constants:
        return None
    out = readers.get(node.output[0], [])
    if not out or any(reader.op_type != "QuantizeLinear" for reader in out):
        return None
    return positions[0], dequantize


def _exact_dequantize(model: Any, node: Any, value: float, dtype: np.dtype) -> str:
    """Add a ``DequantizeLinear`` of `value` over the whole of `dtype`; its output's name."""
    from onnx import helper, numpy_helper

    stem = f"{node.name or node.output[0]}_scalar"
    top = int(np.iinfo(dtype).max)
    q, zero_point = (top, 0) if value > 0 else (0, top) if value < 0 else (0, 0)
    scale = float(np.float32(abs(value)) / np.float32(top)) or 1.0
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(q, dtype=dtype), f"{stem}_q"),
        numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{stem}_scale"),
        numpy_helper.from_array(np.array(zero_point, dtype=dtype), f"{stem}_zero_point"),
    ])
    dequantize = helper.make_node("DequantizeLinear", [f"{stem}_q", f"{stem}_scale", f"{stem}_zero_point"],
                                  [f"{stem}_dq"], name=f"{stem}_dq")
    dequantize.metadata_props.extend(node.metadata_props)  # the op's own aten node
    at = list(model.graph.node).index(node)
    model.graph.node.insert(at, dequantize)
    return dequantize.output[0]


def _dequantize_in_encoding(model: Any, node: Any, value: float, other: Any, constants: dict) -> str:
    """Add a ``DequantizeLinear`` of `value` in the encoding of `other`'s output; its
    output's name. A quantized Select copies its inputs' integers into its output:
    they must share one encoding (a 0 encoded on its own read as the output's lowest
    value on HTP), and the fake-quantized reference rounds the number in that encoding
    too (its output shares its operand's parameters)."""
    from onnx import helper, numpy_helper

    scale = float(numpy_helper.to_array(constants[other.input[1]]))
    zero_point = numpy_helper.to_array(constants[other.input[2]])
    info = np.iinfo(zero_point.dtype)
    q = np.clip(np.round(value / scale) + int(zero_point), info.min, info.max).astype(zero_point.dtype)
    stem = f"{node.name or node.output[0]}_scalar"
    model.graph.initializer.append(numpy_helper.from_array(np.array(q), f"{stem}_q"))
    dequantize = helper.make_node("DequantizeLinear", [f"{stem}_q", other.input[1], other.input[2]],
                                  [f"{stem}_dq"], name=f"{stem}_dq")
    dequantize.metadata_props.extend(node.metadata_props)
    model.graph.node.insert(list(model.graph.node).index(node), dequantize)
    return dequantize.output[0]
