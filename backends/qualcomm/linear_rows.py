"""Quantized linears over inputs of rank 3 or more, written as Gemms over 2-d rows.

torch.onnx writes ``linear(x, w, b)`` over a 2-d x as ``Gemm(x, w, b, transB=1)``, and
over a 3-d or larger x as ``MatMul(x, Transpose(w)) + b``. In a quantized graph the
weight and the bias are per-channel DequantizeLinear nodes, which QNN's EP
(onnxruntime-qnn 2.7.0) takes only as inputs of an op it quantizes as a whole: before a
Transpose or an Add it refuses them ("QNN EP does not support a standalone DQ op with
per-channel quantization"), and the partition fell back to portable torch (a
LayerNorm -> Linear over [1, 8, 64], any transformer block). This writes such a linear as

    DQ(x) -> Reshape(rows) -> Q -> DQ -> Gemm(DQ(w), DQ(b), transB=1) -> Q -> DQ -> Reshape(back) -> Q

where the last Q is the linear's own. Each new Q/DQ pair takes the parameters of the
value it sits on (x's, or the linear's output's), so every value stays on the grid it
was on and the numbers are those of the fake-quantized reference; a Reshape between a
DQ and a Q of one parameter set is a form QNN quantizes as a whole.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .native_norm import static_shapes


def linears_as_rows(model: Any) -> int:
    """Rewrite every quantized ``MatMul(DQ(x), Transpose(DQ(w)))`` (+ ``DQ(b)``) read by
    one QuantizeLinear, x of a static rank >= 3, in place; returns how many."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    shapes = static_shapes(model)
    rewritten, transposes = 0, {}
    for matmul in [n for n in graph.node if n.op_type == "MatMul"]:
        found = _match(matmul, producer, readers, shapes)
        if found is None:
            continue
        transpose, add, out_quantize = found
        _replace(model, matmul, transpose, add, out_quantize, producer, shapes)
        transposes[transpose.output[0]] = transpose
        rewritten += 1
    # A weight shared by linears (ALBERT's layers) has one Transpose: the exporter's
    # optimizer merged theirs. It goes once the last of them reads the weight directly.
    still_read = {name for node in graph.node for name in node.input}
    for name, transpose in transposes.items():
        if name not in still_read:
            graph.node.remove(transpose)
    return rewritten


def _match(matmul: Any, producer: dict, readers: dict, shapes: dict) -> tuple[Any, Any, Any] | None:
    x, transposed = matmul.input
    x_dq, transpose = producer.get(x), producer.get(transposed)
    if x_dq is None or x_dq.op_type != "DequantizeLinear" or len(shapes.get(x, ())) < 3:
        return None
    if transpose is None or transpose.op_type != "Transpose" or _perm(transpose) != [1, 0]:
        return None
    w_dq = producer.get(transpose.input[0])
    if w_dq is None or w_dq.op_type != "DequantizeLinear":
        return None
    reader, add = _only_reader(matmul.output[0], readers), None
    if reader is not None and reader.op_type == "Add":
        bias = producer.get(reader.input[1])
        if bias is None or bias.op_type != "DequantizeLinear" or reader.input[0] != matmul.output[0]:
            return None
        add, reader = reader, _only_reader(reader.output[0], readers)
    if reader is None or reader.op_type != "QuantizeLinear":
        return None
    return transpose, add, reader


def _replace(model: Any, matmul: Any, transpose: Any, add: Any | None, out_quantize: Any, producer: dict,
             shapes: dict) -> None:
    from onnx import helper, numpy_helper

    graph = model.graph
    x, y = matmul.input[0], (add or matmul).output[0]
    x_params, y_params = list(producer[x].input[1:]), list(out_quantize.input[1:])
    x_shape, y_shape = shapes[x], shapes.get(y) or shapes[matmul.output[0]]
    stem = f"{matmul.name or y}_rows"
    rows_shape = numpy_helper.from_array(np.array([-1, x_shape[-1]], dtype=np.int64), f"{stem}_in_shape")
    back_shape = numpy_helper.from_array(np.array(y_shape, dtype=np.int64), f"{stem}_out_shape")
    graph.initializer.extend([rows_shape, back_shape])
    gemm_inputs = [f"{stem}_x_dq", transpose.input[0]] + ([add.input[1]] if add is not None else [])
    nodes = [
        helper.make_node("Reshape", [x, rows_shape.name], [f"{stem}_x"], name=f"{stem}_reshape_x"),
        helper.make_node("QuantizeLinear", [f"{stem}_x", *x_params], [f"{stem}_x_q"], name=f"{stem}_x_q"),
        helper.make_node("DequantizeLinear", [f"{stem}_x_q", *x_params], [f"{stem}_x_dq"], name=f"{stem}_x_dq"),
        helper.make_node("Gemm", gemm_inputs, [f"{stem}_y"], name=f"{stem}_gemm", transB=1),
        helper.make_node("QuantizeLinear", [f"{stem}_y", *y_params], [f"{stem}_y_q"], name=f"{stem}_y_q"),
        helper.make_node("DequantizeLinear", [f"{stem}_y_q", *y_params], [f"{stem}_y_dq"], name=f"{stem}_y_dq"),
        helper.make_node("Reshape", [f"{stem}_y_dq", back_shape.name], [y], name=f"{stem}_reshape_y"),
    ]
    last = add if add is not None else matmul  # every input of the new nodes is produced before it
    at = list(graph.node).index(last)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    for old in (matmul, add):  # the transpose: by linears_as_rows, once nothing reads it
        if old is not None:
            graph.node.remove(old)


def _only_reader(name: str, readers: dict) -> Any | None:
    found = readers.get(name, [])
    return found[0] if len(found) == 1 else None


def _perm(node: Any) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])
