"""RMS norms in the operand order QNN HTP can prepare: the scale multiplied last.

Hugging Face's RMS norms (Llama, Qwen2, Mistral, T5, ...) end with ``weight * normed``,
which torch.onnx writes as ``Mul(weight, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x,
2)), eps)))))``. QNN HTP (onnxruntime-qnn 2.7.0, QNN's HTP simulator) fails to prepare
any graph holding that chain: "Failed to finalize QNN graph ... QNN_COMMON_ERROR_MEM_ALLOC"
(every width tried, 32 to 576), so the whole partition falls back to portable torch. The
same chain with the scale as the Mul's second operand, ``Mul(normed, weight)``, prepares
and runs within fp16 error; so does every other variant tried (no eps, Div by Sqrt,
``x * x`` for the Pow). Multiplication commutes, so swapping the operands is exact.
"""

from __future__ import annotations

from typing import Any


def reorder_norm_scales(model: Any) -> int:
    """Swap the operands of every ``Mul(scale, x * Reciprocal(...))`` whose scale is an
    initializer, in place (an onnx.ModelProto); return how many were swapped."""
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    producer = {out: node for node in graph.node for out in node.output}
    swapped = 0
    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        scale, normed = node.input
        if scale in constants and _scaled_by_reciprocal(producer.get(normed), producer):
            node.input[0], node.input[1] = normed, scale
            swapped += 1
    return swapped


def _scaled_by_reciprocal(node: Any, producer: dict[str, Any]) -> bool:
    """Whether ``node`` is a Mul one of whose operands a Reciprocal produced (an RMS
    norm's ``x * rsqrt(...)``; torch.onnx writes rsqrt as Reciprocal(Sqrt))."""
    if node is None or node.op_type != "Mul":
        return False
    return any(getattr(producer.get(name), "op_type", None) == "Reciprocal" for name in node.input)
