"""Integer casts of initializers folded into the initializers (a per-channel zero point).

torch.onnx writes a per-channel dequantize's zero point (int64 in the quantized torch
graph) as ``Cast(zero_point, to=int8) -> DequantizeLinear``. Its optimizer folds that
Cast into an int8 initializer only for inputs of up to 8,192 elements; a larger weight
keeps the Cast as a run-time node, and QNN HTP (onnxruntime-qnn 2.7.0) then cannot read
the zero point as the static value a quantized weight needs: "Failed to create Cast
node" / "Failed to get initializer value", and the linear falls back to portable torch.
So SmolLM2's a16w8 lm_head (49,152 output channels, tied to the embedding) ran on the
CPU. Casting an integer initializer to an integer type that holds every value is exact,
so the cast is done here, at export, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fold_initializer_casts(model: Any) -> int:
    """Replace each ``Cast`` of an integer initializer to an integer type that holds all
    its values by an initializer of that type, in place (an onnx.ModelProto); return how
    many were folded."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type != "Cast" or len(node.input) != 1 or node.input[0] not in initializers:
            continue
        to = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")
        value = numpy_helper.to_array(initializers[node.input[0]])
        target = helper.tensor_dtype_to_np_dtype(to)
        if not (_integer(value.dtype) and _integer(target) and _holds(target, value)):
            continue
        graph.initializer.append(numpy_helper.from_array(value.astype(target), node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    for name in {node.input[0] for node in folded} - read:
        graph.initializer.remove(next(init for init in graph.initializer if init.name == name))
    return len(folded)


def _integer(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer)


def _holds(dtype: np.dtype, value: np.ndarray) -> bool:
    info = np.iinfo(dtype)
    return value.size == 0 or (int(value.min()) >= info.min and int(value.max()) <= info.max)
