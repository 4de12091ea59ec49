"""RMS norms in a form QNN HTP prepares and computes within fp16's range.

Every RMS norm reaches the ONNX graph as the same chain: ``torch.nn.functional.rms_norm``
decomposes to it, and Hugging Face's RMS norms (Llama, Qwen2, Mistral, T5, ...) are
written so: ``Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))``, then times a
scale. Two rewrites keep it on HTP and right:

- **The scale last.** HF's norms end with ``weight * normed``, ``Mul(weight, Mul(x,
  Reciprocal(...)))``. QNN HTP (onnxruntime-qnn 2.7.0, QNN's HTP simulator) fails to
  prepare any graph holding that chain: "Failed to finalize QNN graph ...
  QNN_COMMON_ERROR_MEM_ALLOC" (every width tried, 32 to 576), so the whole partition
  falls back to portable torch. The same chain with the scale as the Mul's second
  operand, ``Mul(normed, weight)``, prepares and runs within fp16 error; so does every
  other variant tried (no eps, Div by Sqrt, ``x * x`` for the Pow). Multiplication
  commutes, so swapping the operands is exact.
- **Max-scaled.** HTP computes in fp16, whose largest value is 65504: ``x ** 2``
  overflows once |x| passes 256, and LLM residual streams hold such values ("massive
  activations" of hundreds to thousands; torch's OpInfo sample squares values near 800).
  With ``s = max(|x|, sqrt(eps))`` over the normalized dims the norm is rewritten
  exactly as ``(x / s) * rsqrt(mean((x / s) ** 2) + (sqrt(eps) / s) ** 2)``: ``x / s``
  lies in [-1, 1], so no intermediate leaves fp16's range, and the mean is at least
  1/n (one element is ±1) or the eps term is 1, so none sinks below fp16's normal range
  where it would matter either. ``s`` is never 0: an all-zero row gives ``0 * rsqrt(0 +
  1) = 0``, as torch does. Only chains with a positive constant eps are rewritten (a
  norm with no eps divides by zero on an all-zero row in torch itself). The square is
  written ``x * x``: HTP's ``Pow(x, 2)`` returns -4 for -0.0 (see pow_rewrite.py), and
  ``x / s`` makes -0.0 of every negative x below s's fp16 resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _RmsChain:
    """One RMS norm's nodes: ``normed = Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x,
    2)), eps))))``, with ``eps`` the positive constant the Add adds."""

    x: str
    power: Any
    mean: Any
    add: Any
    normed: Any
    eps: float


def max_scale_rms_norms(model: Any) -> int:
    """Rewrite every RMS norm chain of ``model`` (an onnx.ModelProto, in place) max-scaled
    (see the module docstring); return how many were rewritten."""
    chains = _rms_chains(model.graph)
    for chain in chains:
        _max_scale(model.graph, chain)
    return len(chains)


def _rms_chains(graph: Any) -> list[_RmsChain]:
    """The RMS norm chains of ``graph`` whose intermediates nothing else reads."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for output in graph.output:
        readers[output.name] = readers.get(output.name, 0) + 1

    def made_by(name: str, op_type: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type and readers.get(name) == 1 else None

    def scalar(name: str) -> float | None:
        value = values.get(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    chains = []
    for normed in graph.node:
        if normed.op_type != "Mul" or len(normed.input) != 2:
            continue
        for x, root in (tuple(normed.input), tuple(normed.input)[::-1]):
            reciprocal = made_by(root, "Reciprocal")
            sqrt = reciprocal and made_by(reciprocal.input[0], "Sqrt")
            add = sqrt and made_by(sqrt.input[0], "Add")
            if not add:
                continue
            mean_input, eps = next(((a, scalar(b)) for a, b in (tuple(add.input), tuple(add.input)[::-1])
                                    if scalar(b) is not None and made_by(a, "ReduceMean")), (None, None))
            mean = mean_input and made_by(mean_input, "ReduceMean")
            power = mean and made_by(mean.input[0], "Pow")
            keeps_dims = mean and all(a.i == 1 for a in mean.attribute if a.name == "keepdims")
            if power and keeps_dims and power.input[0] == x and scalar(power.input[1]) == 2.0 and eps > 0:
                chains.append(_RmsChain(x=x, power=power, mean=mean, add=add, normed=normed, eps=eps))
                break
    return chains


def _max_scale(graph: Any, chain: _RmsChain) -> None:
    """Rewrite one chain in place: ``x`` divided by ``s = max(|x|, sqrt(eps))`` where
    the chain read it, and ``(sqrt(eps) / s) ** 2`` added for ``eps``. Six nodes, three
    of them on the reduced shape; inserted before the Pow (after ``x`` exists), which
    becomes ``x * x``."""
    import numpy as np
    from onnx import helper, numpy_helper

    tag = chain.normed.output[0] + "_maxscaled"
    root_eps = numpy_helper.from_array(np.array(math.sqrt(chain.eps), dtype=np.float32), tag + "_root_eps")
    graph.initializer.append(root_eps)
    reduce_max = helper.make_node("ReduceMax", [tag + "_abs", *chain.mean.input[1:]], [tag + "_max"],
                                  name=tag + "_reducemax")
    reduce_max.attribute.extend(chain.mean.attribute)  # same axes form, keepdims=1
    nodes = [
        helper.make_node("Abs", [chain.x], [tag + "_abs"], name=tag + "_abs"),
        reduce_max,
        helper.make_node("Max", [tag + "_max", root_eps.name], [tag + "_s"], name=tag + "_floor"),
        helper.make_node("Div", [chain.x, tag + "_s"], [tag + "_x"], name=tag + "_div"),
        helper.make_node("Div", [root_eps.name, tag + "_s"], [tag + "_k"], name=tag + "_eps_div"),
        helper.make_node("Mul", [tag + "_k", tag + "_k"], [tag + "_eps"], name=tag + "_eps_square"),
    ]
    for node in nodes:  # QNN's refusals map back to the aten node the Pow came from
        node.metadata_props.extend(chain.power.metadata_props)
    position = list(graph.node).index(chain.power)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    chain.power.op_type = "Mul"  # HTP's Pow(-0.0, 2) is -4: x * x is exact
    chain.power.input[:] = [tag + "_x", tag + "_x"]
    chain.add.input[list(chain.add.input).index(chain.mean.output[0]) ^ 1] = tag + "_eps"
    chain.normed.input[list(chain.normed.input).index(chain.x)] = tag + "_x"
