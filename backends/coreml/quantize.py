"""The PT2E quantizer of the coreml backend: int8 activations where Core ML quantizes them.

Imports torchao: import this module only when quantizing (`CoreMLBackend.quantizer`
does, lazily).

Core ML's activation quantization (coremltools' `linear_quantize_activations`) puts an
int8 quantize/dequantize pair on the inputs of conv, linear, add and pooling ops and
after each such op (with the relu that follows it), symmetric per tensor
("linear_symmetric"). coremltools measures the ranges by running the model in Core ML,
which only macOS can do; edgeport measures the same values on the same calibration
batches in torch: this quantizer annotates those edges, the core calibrates them, and
coremltools converts the resulting quantize/dequantize pairs into the same MIL
`quantize`/`dequantize` ops. The weights stay float here: the backend compresses them
with `linear_quantize_weights` at compile time (compress.py).

Weight-only schemes (int4-weight, palettize4/6) annotate nothing: their compression is
coremltools' at compile time, on the converted ML program. A weight of 2,048 elements or
fewer stays fp16 there (`compress.WEIGHT_THRESHOLD`), so the quantizer names the ops
reading one in `kept_float`, for the summary: a small model's export said "quantizes its
2 op(s) with palettize4" and palettized nothing. It names the ops whose weight is
compressed in `compressed`, which the summary counts: the transformer encoder's said
"quantizes 42 of its 43 op(s) with palettize4" for 8 palettized linears.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import FakeQuantize, MinMaxObserver, MovingAverageMinMaxObserver
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

from edgeport.quantize import STATIC, Scheme
from edgeport.quantize.annotations import ANNOTATION

from .compress import WEIGHT_THRESHOLD

_EPS = 2**-12  # smallest scale: keeps an all-zero tensor's scale finite

aten = torch.ops.aten
# The ops linear_quantize_activations quantizes around (its prefix pass's op types), as
# core ATen: their activation inputs (position in args) get a quantize/dequantize pair.
ACTIVATION_INPUTS = {
    aten.convolution.default: (0,),
    aten.linear.default: (0,),
    aten.avg_pool2d.default: (0,),
    aten.add.Tensor: (0, 1),
}
# An activation that follows one of them is quantized with it (its suffix pass's patterns).
FUSED_ACTIVATIONS = frozenset({aten.relu.default})
# The ops whose stored weight (position in args) compile-time compression stores compressed.
WEIGHT_INPUTS = {aten.convolution.default: 1, aten.linear.default: 1, aten.embedding.default: 0}


def _activation_spec(qat: bool) -> QuantizationSpec:
    """int8 per tensor, symmetric (zero point 0): coremltools' default "linear_symmetric"."""
    if qat:
        ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127,
                                     dtype=torch.int8, qscheme=torch.per_tensor_symmetric, eps=_EPS)
    else:
        ctr = MinMaxObserver.with_args(qscheme=torch.per_tensor_symmetric, eps=_EPS)
    return QuantizationSpec(torch.int8, ctr, -128, 127, torch.per_tensor_symmetric)


class CoreMLQuantizer(Quantizer):
    """Annotates a core-ATen graph with int8 activations as Core ML quantizes them."""

    def __init__(self, scheme: Scheme) -> None:
        super().__init__()
        self.scheme = scheme
        # read by the quantization summary: node -> why it stays float, and the nodes
        # whose weight compile-time compression stores compressed
        self.kept_float: dict[str, str] = {}
        self.compressed: frozenset[str] = frozenset()

    def annotate(self, model: GraphModule) -> GraphModule:
        self.compressed, small = _weights(model)
        if self.scheme.activations != STATIC:
            self.kept_float = small
            return model  # weights only: compressed by coremltools at compile time
        spec = _activation_spec(self.scheme.qat)
        for node in model.graph.nodes:
            positions = ACTIVATION_INPUTS.get(node.target)
            if positions is None or ANNOTATION in node.meta:
                continue
            inputs = {arg: spec for i, arg in enumerate(node.args) if i in positions and _runtime_float(arg)}
            if not inputs:
                continue
            tail = _fused_activation(node)
            if tail is None:
                node.meta[ANNOTATION] = QuantizationAnnotation(inputs, spec, _annotated=True)
            else:
                node.meta[ANNOTATION] = QuantizationAnnotation(inputs, None, _annotated=True)
                tail.meta[ANNOTATION] = QuantizationAnnotation({}, spec, _annotated=True)
        return model

    def validate(self, model: GraphModule) -> None:
        pass


def _runtime_float(arg: Any) -> bool:
    """A float tensor computed at run time (not a weight, not a Python number)."""
    if not isinstance(arg, Node) or arg.op == "get_attr":
        return False
    value = arg.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _fused_activation(node: Node) -> Node | None:
    """The relu that is `node`'s only reader, if any: quantized after it, as one."""
    users = list(node.users)
    if len(users) == 1 and users[0].target in FUSED_ACTIVATIONS and ANNOTATION not in users[0].meta:
        return users[0]
    return None


def _weights(model: GraphModule) -> tuple[frozenset[str], dict[str, str]]:
    """The ops whose stored weight compile-time compression stores compressed, and those
    whose weight is too small for it, with why."""
    compressed, kept = set(), {}
    for node in model.graph.nodes:
        position = WEIGHT_INPUTS.get(node.target)
        weight = node.args[position] if position is not None and len(node.args) > position else None
        if not (isinstance(weight, Node) and weight.op == "get_attr"):
            continue
        owner, _, name = weight.target.rpartition(".")
        value = getattr(model.get_submodule(owner), name, None)  # a parameter or a buffer (a rotary table)
        if not isinstance(value, torch.Tensor):
            continue
        if value.numel() > WEIGHT_THRESHOLD:
            compressed.add(node.name)
        else:
            kept[node.name] = (f"its weight has {value.numel():,} elements: Core ML keeps a weight of "
                               f"{WEIGHT_THRESHOLD:,} or fewer in fp16")
    return frozenset(compressed), kept
