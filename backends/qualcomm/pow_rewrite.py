"""Integer powers as multiplications: QNN HTP's Pow is wrong at zero.

QNN HTP (onnxruntime-qnn 2.7.0, QNN's HTP simulator) computes ``Pow(x, k)`` wrongly
where x is zero: ``(-0.0) ** 2`` is -4, ``(-0.0) ** 4`` 16, ``(-0.0) ** 1`` 131008,
``0.0 ** 0`` 0, ``0.0 ** -1`` 0. A signed zero is an ordinary value in a network (any
product of 0 and a negative number, ``x / s`` of a tiny negative x), so ``x ** 2`` on
HTP was wrong wherever one appeared. The same powers written as multiplications
(``x * x``, ``(x * x) * x``, ...) are exact for every x: torch's ``pow`` with an
integer exponent is repeated multiplication. support.py takes only constant integer
exponents from 1 to `MAX_EXPONENT` (the rest are declined); this writes each such Pow
as at most 2 * log2(k) Muls.

A Pow whose result a ReduceMean averages (an RMS norm's ``mean(x ** 2)``) stays a Pow.
Written as ``x * x`` there, SmolLM2-135M in fp16 on HTP goes wrong from its first token
(`bench/llm_npu.py --backend qualcomm --tokens 4 --max-seq-len 64`, 2026-11-26: greedy
" ST Hind Cur Hind", logit error 45.7 on logits up to 30.6), while with the Pow kept it
matches the fp32 cpu program (" Paris.\n\n", logit error 0.091): HTP computes that chain
in a way the multiplied form loses. Such a norm reads a signed zero as a zero anyway.

Quantized, HTP has no integer Pow: between its dequantize and quantize it computed
``x ** 3`` (GPT-2's tanh GELU) in float. So the quantizer writes such a power as the
same products before annotation (`power_as_products`, through its ``expand``), each
product observed and quantized like any Mul (GPT-2 with its padding mask, zoo, a16w8:
every op quantized; HTP against its fake-quantized reference 48 dB). There too an RMS
norm's square stays a Pow: the quantizer quantizes the norm as QNN's RmsNorm.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from torch.fx import Node

# Beyond this an fp16 power overflows for any |x| > 1.4 (x ** 32 > 65504): not worth a chain.
MAX_EXPONENT = 32

aten = torch.ops.aten
Value = TypeVar("Value")


def rewrite_integer_powers(model: Any) -> int:
    """Replace every ``Pow(x, k)`` of a constant integer 1 <= k <= MAX_EXPONENT that no
    ReduceMean reads by Muls, in place (an onnx.ModelProto); return how many were
    replaced."""
    from onnx import numpy_helper

    graph = model.graph
    exponents = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    averaged = {name for node in graph.node if node.op_type == "ReduceMean" for name in node.input}
    rewritten = 0
    for position in reversed(range(len(graph.node))):
        node = graph.node[position]
        if node.op_type != "Pow" or node.output[0] in averaged:
            continue
        exponent = exponents.get(node.input[1])
        if exponent is None or exponent.size != 1:
            continue
        k = float(exponent.reshape(()))
        if not (k.is_integer() and 1 <= k <= MAX_EXPONENT):
            continue
        chain = _multiplications(node, int(k))
        del graph.node[position]
        for offset, mul in enumerate(chain):
            graph.node.insert(position + offset, mul)
        rewritten += 1
    return rewritten


def power_as_products(node: Node) -> Node | None:
    """A float ``aten.pow(x, k)`` of a constant integer 2 <= k <= MAX_EXPONENT that no
    mean reads, as Muls inserted before it (the last one returned); None if not one."""
    value = node.meta.get("val")
    if node.target != aten.pow.Tensor_Scalar or not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None
    exponent = node.args[1]
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not float(exponent).is_integer():
        return None
    if not 2 <= exponent <= MAX_EXPONENT or any(user.target == aten.mean.dim for user in node.users):
        return None
    graph = node.graph
    with graph.inserting_before(node):
        return _square_and_multiply(node.args[0], int(exponent),
                                    lambda a, b: graph.call_function(aten.mul.Tensor, (a, b)))


def _square_and_multiply(base: Value, k: int, mul: Callable[[Value, Value], Value]) -> Value:
    """``base ** k`` (k >= 1) by at most 2 * log2(k) calls of `mul`; the last call's
    result is the power."""
    result, square = None, base
    while True:
        if k & 1:
            result = square if result is None else mul(result, square)
        k >>= 1
        if not k:
            return result
        square = mul(square, square)


def _multiplications(power: Any, k: int) -> list[Any]:
    """Nodes computing ``power``'s base to the ``k`` (square and multiply), the last
    one writing ``power``'s output; each keeps ``power``'s provenance."""
    from onnx import helper

    base, output, tag = power.input[0], power.output[0], power.output[0] + "_pow"
    nodes: list[Any] = []

    def mul(a: str, b: str) -> str:
        name = f"{tag}{len(nodes)}"
        nodes.append(helper.make_node("Mul", [a, b], [name], name=name))
        return name

    _square_and_multiply(base, k, mul)
    if not nodes:  # k == 1
        nodes.append(helper.make_node("Identity", [base], [output], name=tag))
    else:  # the top bit is set: the last Mul made is the result
        nodes[-1].output[0] = output
    for node in nodes:
        node.metadata_props.extend(power.metadata_props)
    return nodes
