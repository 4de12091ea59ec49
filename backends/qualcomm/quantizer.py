"""The PT2E quantizer of the qualcomm backend: QNN HTP's int8 and a16w8 schemes.

Imports torchao: import this module only when quantizing (`QualcommBackend.quantizer`
does, lazily).

What QNN HTP runs quantized, and so what this quantizer writes (the same format ONNX
Runtime's own QNN tooling, `get_qnn_qdq_config`, produces):

- activations unsigned and asymmetric, per tensor: uint8 for int8, uint16 for a16w8
  (QNN's native UFIXED_POINT types; signed activations compile to the same numbers,
  and leaving them to other backends keeps ownership plain in a mixed program: a
  signed quantize belongs to the cpu's int8, an unsigned one to qualcomm);
- weights int8, symmetric (zero point 0), per output channel: axis 0 of a convolution
  or linear weight, axis 1 of a transposed convolution's;
- biases int32 at input scale x weight scale, per channel, so QNN adds them in its
  accumulator as the fake-quantized reference does;
- 16-bit sigmoid and tanh outputs at QNN's fixed parameters (1/65536 from 0, and
  1/32768 around 32768): QNN requires them.

A convolution (or an add) followed by a relu or relu6 that only it reads is quantized as
one op, as QNN runs it (ONNX Runtime's QNN EP fuses dequantize -> Conv -> Relu/Clip ->
quantize into one quantized Conv when the quantize makes the activation redundant, which
an observed relu output's range from 0 does): no quantize between them, so the reference
rounds once where HTP rounds once.

A method's outputs, 16-bit, are quantized over twice their calibrated span (half of it
added at each end, `OUTPUT_HEADROOM`): a value beyond the calibrated range is clipped,
and an output is what the caller reads (an LLM's logits, whose top values are the ones
greedy decoding picks, went above a range calibrated on a few prefill calls: SmolLM2's
top logits clipped to one value). 16 bits keep the steps fine (a span of 120 over 65,535).
A fused relu's output keeps its range from 0 and gets the whole span above
(`NonNegativeHeadroomObserver`): QNN fuses it only so.

An RMS norm (pow, mean, add, rsqrt, mul, and a mul by its constant weight) is quantized
as one op, x, weight and output only: onnx_export writes it as QNN's native RmsNorm
(native_norm.py), which has no quantized intermediates. Quantizing its insides
would be wrong: its square had one per-tensor range for every position, and a decoder's
massive activations (SmolLM2-135M: 22,500 at the first position from layer 12) set it:
every other position's squares rounded to 0 or a few steps, rsqrt of ~eps followed, and
the fake-quantized reference itself lost the fp32 tokens from the first one. An RMS
norm that chain does not match (a weight computed at run time, an integer eps) stays
float inside, from the dequantized x to the quantize its reader puts on its output: QNN
computes it in fp16.

A layer norm is quantized as QNN's LayerNorm takes it: its scale uint8 per tensor (at
16-bit activations too), its bias int32 (`_annotate_layer_norm`); a group norm is
written as one over each group, and its affine (`expand`, group_norm.py). An attention (unmasked,
causal, bool-masked, or with a float mask attention.py can split) is expanded into the
MatMul, Softmax and MatMul HTP quantizes, with an add and selects for the mask
(`expand`, attention.py).
A table lookup's table is quantized per tensor, its rows sharing its parameters
(`_annotate_lookup`).
An op reading program state (an LLM's V cache) reads it through a copy, quantized at
run time (`expand`). At 16 bits, an operand broadcast over the batch of a sum a layer
norm reads is copied to the batch first (`expand`, batch_broadcast.py): HTP's sum was
wrong.

Ops QNN moves data with (reshape, transpose, max pool, padding, ...) share their
input's parameters, so no requantization happens around them; a concatenation's inputs
and output share one set (`JOINED`). An elementwise op of a
tensor and a number (``x * 0.5``, an attention's scaling) is quantized as a whole:
onnx_export gives the number an exact quantized form (scalar_operands.py), without
which QNN computed the op in float. An op not in `FORMS` stays float between a
dequantize and a quantize: QNN computes it in fp16 inside the same quantized graph,
and the placement report shows it as float (`qnn_runtime._float_ops`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import (
    FakeQuantize,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)

from edgeport.quantize.annotations import ANNOTATION, float_output, is_annotated
from edgeport.quantize import Scheme
from edgeport.quantize.expand import free_buffer_name
from edgeport.quantize.int32_bias import INT32_RANGE, BiasFitObserver, bias_spec, fit_biases

from .attention import expand_attention
from .batch_broadcast import tile_batch_broadcast
from .group_norm import group_norm_as_layer_norm
from .pow_rewrite import power_as_products

aten = torch.ops.aten

ACTIVATION_DTYPES = {8: torch.uint8, 16: torch.uint16}
WEIGHT_RANGE = (-127, 127)  # symmetric int8: QNN's per-channel weights have zero point 0
ACTIVATION_RANGE_8 = (0, 255)

OWN, SHARED = "own", "shared"  # an output quantized with its own parameters, or its input's
JOINED = "joined"  # every activation input and the output quantized with one set of parameters
OUTPUT_HEADROOM = 1.0  # a 16-bit method output's calibrated span, widened by this fraction of it


@dataclass(frozen=True)
class QuantizedForm:
    """How QNN HTP runs one op quantized.

    `activations`: the argument indices of its quantized activation inputs (a list
    argument, as `cat`'s, counts each element). `weight`/`bias`: argument indices of a
    constant weight (int8 per channel along `weight_axis`) and bias (int32).
    `output`: OWN parameters, SHARED with the first activation input, or JOINED: the
    output and every activation input one set of parameters (a concatenation: see `FORMS`).
    `fixed16`: the (scale, zero point) QNN requires of the 16-bit output.
    """

    activations: tuple[int, ...] = (0,)
    weight: int | None = None
    bias: int | None = None
    weight_axis: int = 0
    output: str = OWN
    fixed16: tuple[float, int] | None = None


_WEIGHTED = QuantizedForm(weight=1, bias=2)
_BINARY = QuantizedForm(activations=(0, 1))
_UNARY = QuantizedForm()
_MOVE = QuantizedForm(output=SHARED)

FORMS: dict[Any, QuantizedForm] = {
    aten.convolution.default: _WEIGHTED,
    aten.linear.default: _WEIGHTED,
    # GPT-2's Conv1D: addmm(bias, x, w), w (in, out): channels along its axis 1
    aten.addmm.default: QuantizedForm(activations=(1,), weight=2, bias=0, weight_axis=1),
    **{op: _BINARY for op in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor,
                              aten.maximum.default, aten.minimum.default, aten.mm.default, aten.bmm.default,
                              aten.matmul.default)},
    **{op: _UNARY for op in (aten.relu.default, aten.hardtanh.default, aten.clamp.default, aten.hardswish.default,
                             aten.hardsigmoid.default, aten.gelu.default, aten.leaky_relu.default,
                             aten._softmax.default, aten._log_softmax.default, aten.avg_pool2d.default,
                             aten._adaptive_avg_pool2d.default, aten.mean.dim, aten.neg.default, aten.abs.default,
                             aten.upsample_bilinear2d.vec)},
    aten.sigmoid.default: QuantizedForm(fixed16=(1.0 / 65536, 0)),
    aten.tanh.default: QuantizedForm(fixed16=(1.0 / 32768, 32768)),
    # Its inputs and output one set of parameters, as other PT2E quantizers do. Given a
    # Concat of inputs at scales of their own (QNN 2.7.0's graph: no Convert between),
    # HTP rounded the relu before it once, at the Concat's scale (1,144 of 1,146 values),
    # where the reference rounded it at its own scale and then at the cat's: int8_cat
    # was a step off on 10% of that half, and 3 steps with HTP's input rounding.
    aten.cat.default: QuantizedForm(activations=(0,), output=JOINED),
    aten.where.self: QuantizedForm(activations=(1, 2)),  # a bool condition picks: it is no activation
    aten.where.ScalarOther: QuantizedForm(activations=(1,), output=SHARED),  # x or a number in x's range
    aten.amin.default: _MOVE,  # one of its input's values
    **{op: _MOVE for op in (aten.view.default, aten._unsafe_view.default, aten.reshape.default,
                            aten.permute.default, aten.squeeze.dims, aten.squeeze.dim, aten.unsqueeze.default,
                            aten.expand.default, aten.clone.default, aten.slice.Tensor, aten.select.int,
                            aten.index_select.default,
                            aten.flip.default, aten.pixel_shuffle.default, aten.constant_pad_nd.default,
                            aten.pad.default,
                            aten.max_pool2d_with_indices.default, aten.upsample_nearest2d.vec)},
}


# Ops that compute into an activation QNN fuses (see the module docstring), and the
# activations: relu, and clamps from 0 (relu6) whose codomain the quantize keeps.
FUSES_ACTIVATION = frozenset({aten.convolution.default, aten.add.Tensor})
_CLAMPS = frozenset({aten.hardtanh.default, aten.clamp.default})


class QualcommQuantizer(Quantizer):
    """Annotates a core-ATen graph for `scheme` (int8 or a16w8) as QNN HTP runs it."""

    def __init__(self, scheme: Scheme) -> None:
        super().__init__()
        if scheme.activation_bits not in ACTIVATION_DTYPES or scheme.weight_bits != 8:
            raise ValueError(f"qualcomm quantizes 8/16-bit activations and 8-bit weights, not {scheme.name}")
        self.scheme = scheme
        self.dtype = ACTIVATION_DTYPES[scheme.activation_bits]
        self.range = (0, torch.iinfo(self.dtype).max)
        self._outputs: frozenset[Node] = frozenset()  # of the graph being annotated: `_output_producers`
        self._biased: list[tuple[Node, Node, Node, Node]] = []  # (input, weight, bias, op) of each biased op
        self.kept_float: dict[str, str] = {}  # node -> why it stays float, for the export summary

    def annotate(self, model: GraphModule) -> GraphModule:
        self._outputs = _output_producers(model.graph) if self.dtype == torch.uint16 else frozenset()
        self._biased = []
        for norm in rms_norms(model.graph):
            self._annotate_rms_norm(norm)
        for node in _rms_norm_insides(model.graph):
            if not is_annotated(node):
                node.meta[ANNOTATION] = QuantizationAnnotation({}, None, _annotated=True)  # float: see the docstring
        for node in list(model.graph.nodes):
            if node.target == aten.native_layer_norm.default and not is_annotated(node):
                self._annotate_layer_norm(node)
            if node.target == aten.embedding.default and not is_annotated(node):
                self._annotate_lookup(node)
            form = FORMS.get(node.target)
            if form is None or node.op != "call_function" or is_annotated(node):
                continue
            if node.target == aten.convolution.default and not _plain_weight_axis(node):
                continue
            activation = _fused_activation(node)
            self._annotate(node, form, quantize_output=activation is None)
            if activation is not None and is_annotated(node):
                self._annotate_fused(activation)
        self.kept_float = _without_form(model.graph)
        # Hold no node past annotation: a QAT model keeps its quantizer, and copying the model
        # to export it copied the nodes' fake tensors too, which fails ("Cannot access data pointer").
        self._outputs = frozenset()
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check: every annotation comes from `FORMS`."""

    def expand(self, node: Node) -> Node | None:
        """An attention as the pieces HTP quantizes (attention.py), a group norm as a
        layer norm over each group (group_norm.py), an op reading
        program state through a copy (`_read_state_through_copy`), an op with a bias
        another op reads given its own (`_own_bias`), an integer power as
        products (pow_rewrite.py: HTP has no quantized Pow), or, at 16 bits, an
        op whose operand is broadcast over the batch with that operand copied to it
        (batch_broadcast.py); the core asks about each node this backend owns
        (core/quantize/expand.py)."""
        return (expand_attention(node) or group_norm_as_layer_norm(node) or _read_state_through_copy(node)
                or _own_bias(node) or power_as_products(node)
                or (tile_batch_broadcast(node) if self.dtype == torch.uint16 else None))

    def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: dict) -> None:
        """Hand each biased op's weight observer its input's observer and its bias (see
        `BiasFitObserver`)."""
        fit_biases(model, self._biased, edge_or_node_to_obs_or_fq)

    # -- one op -------------------------------------------------------------------------------

    def _annotate_fused(self, activation: Node) -> None:
        """The activation after a fused op: its input is the op's float output, only its
        own output is quantized."""
        headroom = activation in self._outputs
        activation.meta[ANNOTATION] = QuantizationAnnotation({}, self._activation(headroom=headroom, nonnegative=True),
                                                             _annotated=True)

    def _annotate(self, node: Node, form: QuantizedForm, quantize_output: bool = True) -> None:
        """Annotate `node` as `form` says; `quantize_output=False` leaves its value float
        (an activation fused into it quantizes it)."""
        activations = _activation_args(node, form)
        if (not any(_runtime_float(a) for a in activations) or float_output(node) is None
                or not all(_runtime_float(a) or _float_constant(a) for a in activations)):
            return
        inputs: dict[Node, QuantizationSpecBase] = {arg: self._activation() for arg in activations}
        if form.output == JOINED:
            first, joined = activations[0], SharedQuantizationSpec((activations[0], node))
            inputs = {first: self._activation(headroom=node in self._outputs),
                      **{arg: joined for arg in activations[1:]}}
        if form.weight is not None:
            weight = node.args[form.weight]
            if not _constant(weight):
                return
            axis = 1 if node.target == aten.convolution.default and node.args[6] else form.weight_axis
            inputs[weight] = self._weight(axis)
            bias = node.args[form.bias] if form.bias is not None and len(node.args) > form.bias else None
            if bias is not None:
                if not _constant(bias):
                    return
                inputs[bias] = bias_spec(activations[0], weight, node)
                self._biased.append((activations[0], weight, bias, node))
        if not quantize_output:
            node.meta[ANNOTATION] = QuantizationAnnotation(inputs, None, _annotated=True)
            return
        if form.output in (SHARED, JOINED):
            output: QuantizationSpecBase = SharedQuantizationSpec((activations[0], node))
        elif form.fixed16 is not None and self.dtype == torch.uint16:
            scale, zero_point = form.fixed16
            output = FixedQParamsQuantizationSpec(self.dtype, scale, zero_point, *self.range, torch.per_tensor_affine)
        else:
            output = self._activation(headroom=node in self._outputs)
        if node.target == aten.max_pool2d_with_indices.default:  # its value is the tuple's first element
            node.meta[ANNOTATION] = QuantizationAnnotation(inputs, None, _annotated=True)
            values = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
            for value in values:
                value.meta[ANNOTATION] = QuantizationAnnotation({}, output, _annotated=True)
            return
        node.meta[ANNOTATION] = QuantizationAnnotation(inputs, output, _annotated=True)

    def _annotate_rms_norm(self, norm: RmsNorm) -> None:
        """One RMS norm as QNN's native RmsNorm runs it (onnx_export writes it as one
        node, native_norm.py): x, the scale and the output quantized, nothing between
        (no quantized square: its per-tensor range would zero every small square)."""
        last = norm.scaling or norm.normalize
        if not _runtime_float(norm.x) or any(is_annotated(n) for n in (*norm.inner, norm.normalize, last)):
            return
        for node in norm.inner:
            node.meta[ANNOTATION] = QuantizationAnnotation({}, None, _annotated=True)
        norm.inner[0].meta[ANNOTATION] = QuantizationAnnotation({norm.x: self._activation()}, None, _annotated=True)
        shared_x = SharedQuantizationSpec((norm.x, norm.inner[0]))
        if norm.scaling is None:
            norm.normalize.meta[ANNOTATION] = QuantizationAnnotation({norm.x: shared_x}, self._activation(),
                                                                     _annotated=True)
            return
        norm.normalize.meta[ANNOTATION] = QuantizationAnnotation({norm.x: shared_x}, None, _annotated=True)
        # QNN's RmsNorm takes its scale per tensor, unsigned (int8 ones are refused): as an activation.
        norm.scaling.meta[ANNOTATION] = QuantizationAnnotation({norm.weight: self._activation()}, self._activation(),
                                                               _annotated=True)

    def _annotate_layer_norm(self, norm: Node) -> None:
        """A layer norm as QNN's LayerNorm runs it quantized: x and the output at the
        activation type, its scale uint8 per tensor and its bias int32. In ONNX Runtime
        QNN 2.7.0's graph dump every other form tried ran the norm in float or was
        refused: a float, int8, per-channel int8 or (at 16-bit activations) uint16
        scale, a float, int8 or uint8 bias. A norm whose scale or bias is computed at
        run time, or that has no scale, stays float."""
        x, _shape, weight, bias = (*norm.args, None, None)[:4]
        if not (_runtime_float(x) and _constant(weight) and (bias is None or _constant(bias))):
            return
        inputs: dict[Node, QuantizationSpecBase] = {x: self._activation(), weight: self._norm_scale()}
        if bias is not None:
            inputs[bias] = _INT32_BIAS
        norm.meta[ANNOTATION] = QuantizationAnnotation(inputs, None, _annotated=True)
        for value in [u for u in norm.users if u.target is operator.getitem and u.args[1] == 0]:
            value.meta[ANNOTATION] = QuantizationAnnotation({}, self._activation(headroom=value in self._outputs),
                                                            _annotated=True)

    def _annotate_lookup(self, lookup: Node) -> None:
        """A table lookup (embedding) as QNN's Gather runs it quantized: the table per
        tensor at the activation type, the rows it reads sharing its parameters. In ONNX
        Runtime QNN 2.7.0's graph dump a Gather whose output was requantized ran in
        float (and a float table is stored in fp16: twice a uint8 one)."""
        table = lookup.args[0]
        if not (_constant(table) and float_output(table) is not None):
            return
        lookup.meta[ANNOTATION] = QuantizationAnnotation({table: self._activation()},
                                                         SharedQuantizationSpec((table, lookup)), _annotated=True)

    def _norm_scale(self) -> QuantizationSpec:
        """A layer norm's scale: uint8 per tensor, whatever the activations' width."""
        low, high = ACTIVATION_RANGE_8
        observer = FakeQuantize.with_args(observer=MinMaxObserver, quant_min=low, quant_max=high, dtype=torch.uint8) \
            if self.scheme.qat else MinMaxObserver.with_args(dtype=torch.uint8, quant_min=low, quant_max=high)
        return QuantizationSpec(torch.uint8, observer, low, high, torch.per_tensor_affine)

    def _activation(self, headroom: bool = False, nonnegative: bool = False) -> QuantizationSpec:
        """Per-tensor parameters from the calibrated range; ``headroom``: a method
        output's, widened by `OUTPUT_HEADROOM` (QAT learns its ranges: none added), above
        0 only when ``nonnegative`` (a fused relu's: its codomain)."""
        low, high = self.range
        if self.scheme.qat:
            ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=low, quant_max=high,
                                         dtype=self.dtype, qscheme=torch.per_tensor_affine)
        else:
            widened = NonNegativeHeadroomObserver if nonnegative else HeadroomMinMaxObserver
            observer = widened if headroom else MinMaxObserver
            ctr = observer.with_args(dtype=self.dtype, quant_min=low, quant_max=high)
        return QuantizationSpec(self.dtype, ctr, low, high, torch.per_tensor_affine)

    def _weight(self, axis: int) -> QuantizationSpec:
        low, high = WEIGHT_RANGE
        if self.scheme.qat:
            ctr = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=low, quant_max=high,
                                         dtype=torch.int8, qscheme=torch.per_channel_symmetric, ch_axis=axis)
        else:
            ctr = BiasFitObserver.with_args(dtype=torch.int8, quant_min=low, quant_max=high,
                                            qscheme=torch.per_channel_symmetric, ch_axis=axis)
        return QuantizationSpec(torch.int8, ctr, low, high, torch.per_channel_symmetric, ch_axis=axis)


# A layer norm's bias: int32 per tensor, steps of max |bias| / 2^31 (QNN takes any scale).
_INT32_BIAS = QuantizationSpec(torch.int32, MinMaxObserver.with_args(dtype=torch.int32, quant_min=INT32_RANGE[0],
                                                                     quant_max=INT32_RANGE[1],
                                                                     qscheme=torch.per_tensor_symmetric),
                               *INT32_RANGE, torch.per_tensor_symmetric)


class HeadroomMinMaxObserver(MinMaxObserver):
    """A min/max observer whose parameters span `OUTPUT_HEADROOM` more than it saw,
    half below and half above."""

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        pad = (self.max_val - self.min_val) * (OUTPUT_HEADROOM / 2)
        return self._calculate_qparams(self.min_val - pad, self.max_val + pad)


class NonNegativeHeadroomObserver(MinMaxObserver):
    """`HeadroomMinMaxObserver` for a relu (or clamp from 0) fused into the op before it:
    its range starts at 0, as it calibrated, and the span is added above. Padded below 0
    too, a method's output relu no longer made QNN's fusion hold (its quantize must start
    at 0), and HTP computed the relu, and a residual add before it, in float (a16w8
    conv -> relu and x + conv -> relu at a method's output)."""

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        pad = (self.max_val - self.min_val) * OUTPUT_HEADROOM
        return self._calculate_qparams(self.min_val.clamp(min=0), self.max_val + pad)


# -- graph helpers ---------------------------------------------------------------------------------


# ops annotated by their own methods, not through `FORMS`
_OWN_ANNOTATION = frozenset({aten.native_layer_norm.default, aten.embedding.default})


def _without_form(graph: torch.fx.Graph) -> dict[str, str]:
    """Node -> why, for each float op left unannotated because this quantizer has no
    quantized form of it (a sort, a cumsum): HTP computes it in float, and the export's
    summary names it so, as `edgeport explain` shows it."""
    return {node.name: "the qualcomm quantizer has no quantized form of it" for node in graph.nodes
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
            and node.target not in FORMS and node.target not in _OWN_ANNOTATION
            and not is_annotated(node) and float_output(node) is not None}


def _output_producers(graph: torch.fx.Graph) -> frozenset[Node]:
    """The nodes whose quantized value the graph returns: each output, or, through ops
    that share their input's parameters (`SHARED` forms: views, slices, ...), the node
    that sets them; through a `JOINED` form (cat), the op and each of its inputs."""
    found = set()
    pending = _flat_nodes(graph.output_node().args)
    while pending:
        node = pending.pop()
        form = FORMS.get(node.target) if node.op == "call_function" else None
        if form is not None and form.output == SHARED and node.args and isinstance(node.args[0], Node):
            pending.append(node.args[0])
        else:
            found.add(node)
        if form is not None and form.output == JOINED:
            pending.extend(arg for arg in _activation_args(node, form) if arg not in found)
    return frozenset(found)


def _rms_norm_insides(graph: torch.fx.Graph) -> list[Node]:
    """The square, mean, add and rsqrt of every ``x * rsqrt(mean(x ** 2, -1, keepdim) +
    eps)`` in the graph, and that product: what stays float inside an RMS norm."""
    found = []
    for rsqrt in graph.find_nodes(op="call_function", target=aten.rsqrt.default):
        add = rsqrt.args[0]
        mean = add.args[0] if isinstance(add, Node) and add.target == aten.add.Tensor else None
        square = mean.args[0] if isinstance(mean, Node) and mean.target == aten.mean.dim else None
        if not (isinstance(square, Node) and square.target == aten.pow.Tensor_Scalar and square.args[1] == 2):
            continue
        if not isinstance(add.args[1], (int, float)) or list(mean.args[1]) not in ([-1], [square.meta["val"].dim() - 1]):
            continue
        x = square.args[0]
        products = [u for u in rsqrt.users if u.target == aten.mul.Tensor and set(u.args) == {x, rsqrt}]
        found.extend([square, mean, add, rsqrt, *products])
    return found


def _flat_nodes(value: Any) -> list[Node]:
    nodes: list[Node] = []
    torch.fx.node.map_arg(value, nodes.append)
    return nodes


@dataclass(frozen=True)
class RmsNorm:
    """An RMS norm over the last axis in a core-ATen graph: ``normalize = x * rsqrt(mean(x
    ** 2, -1, keepdim) + eps)`` (`inner`: the pow, mean, add and rsqrt), and the
    ``scaling = normalize * weight`` after it if its weight is a constant of x's last
    dim (else `scaling` and `weight` are None)."""

    x: Node
    inner: tuple[Node, ...]
    normalize: Node
    scaling: Node | None
    weight: Node | None


def rms_norms(graph: torch.fx.Graph) -> list[RmsNorm]:
    """Every RMS norm that onnx_export writes as one native norm node (native_norm.py
    matches the same chain in the ONNX graph)."""
    found = []
    for rsqrt in graph.find_nodes(op="call_function", target=aten.rsqrt.default):
        add = rsqrt.args[0]
        if not (_only_user(add, rsqrt) and add.target in (aten.add.Tensor, aten.add.Scalar)
                and isinstance(add.args[1], float)):
            continue
        mean = add.args[0]
        if not (_only_user(mean, add) and mean.target == aten.mean.dim and _last_dim_kept(mean)):
            continue
        square = mean.args[0]
        if not (_only_user(square, mean) and square.target == aten.pow.Tensor_Scalar and square.args[1] == 2):
            continue
        x = square.args[0]
        (normalize,) = rsqrt.users if len(rsqrt.users) == 1 else (None,)
        if normalize is None or normalize.target != aten.mul.Tensor or set(normalize.args) != {x, rsqrt}:
            continue
        scaling, weight = _scaling(normalize, x)
        found.append(RmsNorm(x, (square, mean, add, rsqrt), normalize, scaling, weight))
    return found


def _only_user(node: Any, user: Node) -> bool:
    return isinstance(node, Node) and list(node.users) == [user]


def _last_dim_kept(mean: Node) -> bool:
    rank = mean.args[0].meta["val"].dim()
    dims = mean.args[1] if len(mean.args) > 1 else None
    keepdim = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    return bool(keepdim) and dims is not None and len(dims) == 1 and dims[0] % rank == rank - 1


def _scaling(normalize: Node, x: Node) -> tuple[Node | None, Node | None]:
    """The Mul by a constant weight of x's last dim that only reads ``normalize``."""
    if len(normalize.users) != 1:
        return None, None
    (user,) = normalize.users
    if user.target != aten.mul.Tensor:
        return None, None
    weight = user.args[1] if user.args[0] is normalize else user.args[0]
    width = x.meta["val"].shape[-1]
    if _constant(weight) and float_output(weight) is not None and tuple(weight.meta["val"].shape) == (width,):
        return user, weight
    return None, None


def _fused_activation(node: Node) -> Node | None:
    """The relu (or clamp from 0) QNN fuses into `node`, if `node` is a fusing op whose
    only reader it is."""
    if node.target not in FUSES_ACTIVATION or len(node.users) != 1:
        return None
    (user,) = node.users
    if user.args[0] is not node or is_annotated(user) or float_output(user) is None:
        return None
    if user.target == aten.relu.default:
        return user
    low = user.args[1] if len(user.args) > 1 else user.kwargs.get("min", user.kwargs.get("min_val"))
    return user if user.target in _CLAMPS and low == 0 else None


def _plain_weight_axis(conv: Node) -> bool:
    """A transposed convolution's output channels lie along one weight axis only when
    it is not grouped; a grouped one stays float."""
    return not conv.args[6] or conv.args[8] == 1


def _activation_args(node: Node, form: QuantizedForm) -> list[Node]:
    """The tensors `form` quantizes as activations; [] when an argument is neither a
    node nor a number. A number (``x * 0.5``) is no activation: the op is quantized
    with its tensor input, and onnx_export gives the number an exact quantized form
    (scalar_operands.py)."""
    args: list[Any] = []
    for index in form.activations:
        if index >= len(node.args):
            return []
        value = node.args[index]
        args.extend(value if isinstance(value, (list, tuple)) else [value])
    nodes = [a for a in args if isinstance(a, Node)]
    numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    return list(dict.fromkeys(nodes)) if len(nodes) + len(numbers) == len(args) else []




def _read_state_through_copy(node: Node) -> Node | None:
    """`node` again, reading each program state buffer it quantizes (an LLM's V cache,
    read by ``probs @ V``) through a clone; None if it reads none.

    A quantizer sees a state buffer as a constant (a get_attr the method copies its new
    value into), so `_annotate` left the op float, and QNN computed it in fp16. Quantizing
    the buffer itself would be wrong: PT2E's convert folds a quantize of a get_attr into
    a stored constant, freezing the cache at its calibration value. A quantize of the
    clone happens at run time, on the cache as it is (the K cache is read through a
    permute for the same reason)."""
    form = FORMS.get(node.target)
    if form is None or form.output == SHARED or node.op != "call_function":  # data movement: its reader quantizes
        return None
    states = [arg for arg in _activation_args(node, form) if _state(arg)]
    if not states:
        return None
    graph = node.graph
    with graph.inserting_before(node):
        copies = {state: graph.call_function(aten.clone.default, (state,)) for state in states}
        return graph.call_function(node.target, torch.fx.node.map_arg(node.args, lambda n: copies.get(n, n)),
                                   dict(node.kwargs))


def _own_bias(node: Node) -> Node | None:
    """`node` again, with its own copy of a bias another op also reads; None if not.

    A bias is stored in int32 at input scale x weight scale, and two linears sharing one
    (ALBERT's layers, a layer called twice) have two input scales. PT2E quantized the
    shared bias once, at the first op's scale, and QNN reads each op's int32 bias at its
    own: the other op's bias came out scaled by the ratio (HTP against its fake-quantized
    reference: 5-11 dB; a shared weight alone is right, its scales are the op's own)."""
    form = FORMS.get(node.target)
    if form is None or form.bias is None or len(node.args) <= form.bias or node.op != "call_function":
        return None
    bias = node.args[form.bias]
    if not _constant(bias) or len(bias.users) < 2:
        return None
    graph, module = node.graph, node.graph.owning_module
    name = free_buffer_name(module, "bias_of_" + node.name)
    module.register_buffer(name, operator.attrgetter(bias.target)(module).detach().clone())
    with graph.inserting_before(node):
        copy = graph.get_attr(name)
        copy.meta["val"] = bias.meta["val"]
        args = list(node.args)
        args[form.bias] = copy
        return graph.call_function(node.target, tuple(args), dict(node.kwargs))


def _state(node: Node) -> bool:
    """A buffer the method writes (a get_attr some ``copy_`` writes into): program state."""
    return node.op == "get_attr" and any(u.target == aten.copy_.default and u.args[0] is node for u in node.users)


def _constant(node: Any) -> bool:
    return isinstance(node, Node) and node.op == "get_attr"


def _float_constant(arg: Node) -> bool:
    """A stored float tensor read as an operand (a ViT's position embeddings, a
    ConvNeXt's layer scale): quantized per tensor like an activation, its observer
    seeing its one value. Left float, HTP computed the op in fp16 between quantized ones."""
    val = arg.meta.get("val")
    return _constant(arg) and isinstance(val, torch.Tensor) and val.dtype == torch.float32 and not _state(arg)


def _runtime_float(arg: Node) -> bool:
    val = arg.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32 and not _constant(arg)
