"""The PT2E quantizer of TFLite-writing backends: it annotates what the writer writes in int8.

Imports torchao: import this module only when quantizing (the cpu backend's
`quantizer()` does, lazily).

For the static scheme (int8) each node with an int8 lowering whose structural check
passes (and, for the cpu, that XNNPACK runs in int8) is annotated as its
`Int8Signature` says: activations int8 per tensor,
weights int8 per output channel (symmetric, [-127, 127]), a stored operand of an add
or mul (a position embedding, a layer scale) int8 per tensor from its own values when
its other input is an int8 op's output (`_stored_operand_reason`), outputs with their own
parameters, their input's ("shared": views, pools, concatenation) or the kernel's
fixed ones (sigmoid, softmax). A batch norm and an activation the float plan folds
into an op are quantized as one with it: only the group's last value is observed. A
view (`Int8.view`) is int8 only beside an int8 op, through any run of views between
them: between ops that stay float it would only add a QUANTIZE and a DEQUANTIZE.

For the dynamic schemes (int8-dynamic, int4-weight) linears are annotated: their
input quantized per token at run time (asymmetric int8, as XNNPACK's qd8 kernels do
it), their weight int8 per output channel or 4-bit per group of inputs.

The quantizer annotates the graph edgeport gives it: core ATen, as `support` sees it,
after expanding a product with a stored weight (GPT-2's Conv1D ``addmm``) into the
linear these forms are written for, and for a backend taking every int8 form an
attention into its products and softmax (expand.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node
from torchao.quantization.pt2e import (
    FakeQuantize,
    MinMaxObserver,
    MappingType,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PerGroup,
    PerToken,
)
from torchao.quantization.pt2e._affine_quantization import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedMovingAverageMinMaxObserver,
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
from edgeport.errors import BackendError
from edgeport.fold import module_value
from edgeport.quantize import STATIC, Scheme
from edgeport.quantize.int32_bias import BiasFitObserver, bias_spec, fit_biases

from .expand import SDPA, attention_as_products, product_as_linear, whole_attention_reason
from .infinite_values import holding_infinities
from .int8_plan import HYBRID_LINEARS, activation_args, args_at, group, group_tail
from .lowering import foldable, lookup
from .writer import make_plan

aten = torch.ops.aten
_EPS = 2**-12  # smallest scale: keeps an all-zero tensor's scale finite
_INT4 = (-8, 7)


def _act_spec(qat: bool) -> QuantizationSpec:
    if qat:
        ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127,
                                     dtype=torch.int8, qscheme=torch.per_tensor_affine, eps=_EPS)
    else:
        ctr = MinMaxObserver.with_args(eps=_EPS)
    return QuantizationSpec(torch.int8, ctr, -128, 127, torch.per_tensor_affine)


def _weight_spec(qat: bool, biased: bool = False) -> QuantizationSpec:
    """Per-channel int8 weights; `biased`: an op adding an int32 bias (`BiasFitObserver`)."""
    if qat:
        ctr = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                                     dtype=torch.int8, qscheme=torch.per_channel_symmetric, ch_axis=0, eps=_EPS)
    else:
        ctr = (BiasFitObserver if biased else PerChannelMinMaxObserver).with_args(eps=_EPS)
    return QuantizationSpec(torch.int8, ctr, -127, 127, torch.per_channel_symmetric, ch_axis=0)


def _per_token_spec() -> QuantizationSpec:
    observer = AffineQuantizedMovingAverageMinMaxObserver.with_args(
        mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.int8, granularity=PerToken(), quant_min=-128,
        quant_max=127, averaging_constant=1, is_dynamic=True, eps=torch.finfo(torch.float32).eps,
        scale_dtype=torch.float32, zero_point_dtype=torch.int8)
    return QuantizationSpec(torch.int8, observer, -128, 127, torch.per_tensor_affine, is_dynamic=True)


class KernelScaleGroupObserver(AffineQuantizedMinMaxObserver):
    """Group-wise weight scales as XNNPACK's qb4w kernels use them: LiteRT stores
    FLOAT16 block scales and XNNPACK packs them as bfloat16, so the scales are rounded
    through both here and the fake-quantized reference computes what the kernel does
    (measured: 3e-7 apart, against 0.5% of the output range with float32 scales)."""

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero_point = super().calculate_qparams()
        return scale.to(torch.float16).to(torch.bfloat16).to(scale.dtype), zero_point


def _group_spec(group_size: int) -> QuantizationSpec:
    observer = KernelScaleGroupObserver.with_args(
        mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=PerGroup(group_size),
        quant_min=_INT4[0], quant_max=_INT4[1], eps=_EPS, scale_dtype=torch.float32, zero_point_dtype=torch.int8)
    return QuantizationSpec(torch.int8, observer, *_INT4)


class TfliteQuantizer(Quantizer):
    """Annotates a core-ATen graph for `scheme` as our TFLite writer writes it.

    `xnnpack_only`: annotate only int8 forms XNNPACK runs (`Int8.xnnpack`); the others
    stay float between a dequantize and a quantize, inside the delegate (the cpu).
    """

    def __init__(self, scheme: Scheme, xnnpack_only: bool = False) -> None:
        super().__init__()
        size = scheme.group_size
        if scheme.weight_bits == 4 and size and size % 32:
            # LiteRT's INT4 blocks are a multiple of 32 (qdq.py's reason): every linear
            # would stay float, under a summary saying the backend quantizes them
            raise BackendError(f"int4 weight groups are a multiple of 32 inputs here, not {size}",
                               hint="pass --group-size 32, 64, 128 or another multiple of 32")
        self.scheme = scheme
        self.xnnpack_only = xnnpack_only
        # op -> why it stays float: read by the placement's summary, so "quantizes K of
        # its N op(s)" names the ops the scheme could not take (a linear too narrow for
        # int4 groups, a softmax XNNPACK runs in float only)
        self.kept_float: dict[str, str] = {}
        self._biased: list[tuple[Node, Node, Node, Node]] = []  # (input, weight, bias, op) of each int32 bias

    def annotate(self, model: GraphModule) -> GraphModule:
        graph = model.graph
        consts = _constant_nodes(model)
        live = set(graph.nodes)
        plan = make_plan(graph, live, frozenset(consts))
        self._biased = []
        infinite = holding_infinities(model, consts, _stored_value(model)) if self.scheme.activations == STATIC \
            else frozenset()
        for node in list(graph.nodes):
            if node.op != "call_function" or node in consts or node in plan.alias or is_annotated(node):
                continue
            if float_output(node) is None:
                continue
            if self.scheme.activations == STATIC:
                self._annotate_int8(node, plan, consts, infinite)
            else:
                self._annotate_linear(node, consts)
        if self.scheme.activations == STATIC:
            self._float_views(graph)
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing to check: the annotations come from the writer's own table."""

    def expand(self, node: Node) -> Node | None:
        """A product with a stored weight as the linear the writer quantizes, and, where
        int8 forms XNNPACK leaves out are written, an attention as its products and
        softmax (expand.py); the core asks about each node this backend owns
        (core/quantize/expand.py)."""
        if self.scheme.activations == STATIC and not self.xnnpack_only:
            return product_as_linear(node) or attention_as_products(node)
        return product_as_linear(node)

    def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: dict) -> None:
        """Hand each biased op's weight observer its input's observer and its bias."""
        fit_biases(model, self._biased, edge_or_node_to_obs_or_fq)

    # -- static int8 -------------------------------------------------------------------------

    def _no_int8_form(self, node: Node) -> str:
        """Why an op with no int8 form stays float; for an attention kept whole, why it was
        not expanded into the products and softmax that have one (expand.py)."""
        if node.target != SDPA:
            return "no int8 form here"
        if self.xnnpack_only:
            return ("attention stays whole: XNNPACK runs neither an int8 BATCH_MATMUL of two run-time tensors nor "
                    "an int8 SOFTMAX")
        return whole_attention_reason(node) or "no int8 form here"

    def _annotate_int8(self, node: Node, plan: Any, consts: set[Node], infinite: frozenset[Node]) -> None:
        entry = lookup(node.target)
        if entry is None:  # the writer cannot write it: another backend's node, or portable
            return
        int8 = entry.int8
        activations = activation_args(node, int8.signature) if int8 is not None else []
        why_float = (self._no_int8_form(node) if int8 is None
                     else "XNNPACK runs it in float only" if self.xnnpack_only and not int8.xnnpack
                     else _infinite_input_reason(activations, infinite)
                     or (int8.check(node, consts.__contains__) if int8.check is not None else None))
        if why_float:
            self.kept_float[node.name] = why_float
            return
        runtime = [a for a in activations if _runtime_float(a, consts)]
        stored = [a for a in activations if a not in runtime]
        if not runtime or not all(a in args_at(node, int8.signature.stored) and _stored_float(a, consts)
                                  for a in stored):
            return
        if stored and (reason := _stored_operand_reason(runtime)):
            self.kept_float[node.name] = reason
            return
        qat = self.scheme.qat
        first = activations[0]
        inputs: dict[Node, QuantizationSpecBase] = {first: _input_spec(first, qat)}
        for arg in activations[1:]:
            shared = int8.signature.output == "shared"
            inputs[arg] = SharedQuantizationSpec((first, node)) if shared else _input_spec(arg, qat)
        bias = self._bias(node, int8.signature, plan)
        if int8.signature.weight is not None:
            weight = node.args[int8.signature.weight]
            inputs[weight] = _weight_spec(qat, biased=bias is not None)
            if bias is not None:
                inputs[bias] = bias_spec(first, weight, node)
                self._biased.append((first, weight, bias, node))
        tail = group_tail(node, plan)
        if int8.signature.fixed is not None:
            scale, zero_point = int8.signature.fixed
            output: QuantizationSpecBase = FixedQParamsQuantizationSpec(torch.int8, scale, zero_point, -128, 127,
                                                                        torch.per_tensor_affine)
        elif int8.signature.output == "shared":
            output = SharedQuantizationSpec((first, node))
        else:
            output = _act_spec(qat)
        for member in group(node, plan):
            member.meta[ANNOTATION] = QuantizationAnnotation(_annotated=True)
        if tail is node:
            node.meta[ANNOTATION] = QuantizationAnnotation(inputs, output, _annotated=True)
        else:
            node.meta[ANNOTATION] = QuantizationAnnotation(inputs, None, _annotated=True)
            tail.meta[ANNOTATION] = QuantizationAnnotation({}, output, _annotated=True)

    def _float_views(self, graph: Graph) -> None:
        """Leave float every run of views (`Int8.view`) that no int8 op writes or reads.

        Annotated as any op is, a view between two ops that stay float was written as a
        QUANTIZE, the int8 view and a DEQUANTIZE: two more operators and one more
        rounding of values no int8 op computes or needs (an attention's q/k/v views
        between a float split and a float softmax on the cpu). A run of views next to an
        int8 op stays int8: it carries that op's int8 values, or hands the next one its
        int8 input, and every view of the run shares those parameters."""
        views = [n for n in graph.nodes if _int8_view(n)]
        seen: set[Node] = set()
        for view in views:
            if view in seen:
                continue
            run = _view_run(view)
            seen |= run
            if any(_beside_int8_op(member, run) for member in run):
                continue
            for member in run:
                member.meta[ANNOTATION] = QuantizationAnnotation(_annotated=True)  # claimed, float
                self.kept_float[member.name] = "a view between ops that stay float: int8 would only add a " \
                                               "QUANTIZE, a DEQUANTIZE and a rounding"

    @staticmethod
    def _bias(node: Node, signature: Any, plan: Any) -> Node | None:
        """The bias the writer stores in int32 as the kernel adds it, or None. A conv
        with a batch norm folded in gets none: the writer rounds the folded bias
        (bias x factor + shift) at the folded scale, which no annotation of the bias
        alone describes, so the reference keeps that bias float."""
        if signature.bias is None or len(node.args) <= signature.bias or node in plan.bn_fold:
            return None
        bias = node.args[signature.bias]
        return bias if isinstance(bias, Node) else None

    # -- dynamic: linears ----------------------------------------------------------------------

    def _annotate_linear(self, node: Node, consts: set[Node]) -> None:
        if node.target not in HYBRID_LINEARS or not _runtime_float(node.args[0], consts):
            return
        weight = node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        if weight not in consts or (bias is not None and bias not in consts):
            return
        out_features, in_features = tuple(weight.meta["val"].shape) if weight.meta["val"].dim() == 2 else (0, 1)
        if in_features % 2:  # the writer's hybrid FULLY_CONNECTED takes an even number (int8_plan.py)
            self.kept_float[node.name] = f"{in_features} inputs, an odd number"
            return
        group = self.scheme.group_size
        if self.scheme.weight_bits == 4:
            if not group or in_features % group or group == in_features:
                self.kept_float[node.name] = (f"{in_features} inputs, one group of {group}" if group == in_features
                                              else f"{in_features} inputs, not a multiple of the group size {group}")
                return
            weight_spec = _group_spec(group)
        else:
            weight_spec = _weight_spec(qat=False)
        node.meta[ANNOTATION] = QuantizationAnnotation(
            {node.args[0]: _per_token_spec(), weight: weight_spec}, None, _annotated=True)


# -- graph helpers ---------------------------------------------------------------------------------


def _input_spec(arg: Node, qat: bool) -> QuantizationSpecBase:
    """How an int8 op reads `arg`: a softmax's output at its fixed 1/256, as the kernel
    wrote it; anything else at its own observed steps. Observed anew, an expanded
    attention's probabilities were rounded twice, through a float DEQUANTIZE and QUANTIZE
    the writer had to add before the second product (the zoo's BERT, ViT, Whisper's
    encoder, wav2vec2 on mediatek: +0.4 to +0.7 dB against float, 2026-11-29). Not a
    sigmoid's: read at 1/256, the zoo's Llama and Qwen2 (SiLU) lost 0.5 and 0.4 dB."""
    made = arg.meta.get(ANNOTATION)
    if (arg.target == aten._softmax.default and made is not None
            and isinstance(made.output_qspec, FixedQParamsQuantizationSpec)):
        return SharedQuantizationSpec(arg)
    return _act_spec(qat)


def _stored_value(model: GraphModule) -> Any:
    """A function giving a stored value that is no parameter (a buffer, or what export
    computes from buffers and literals: a mask), computed once; None for a parameter (a
    weight holding infinity is the checkpoint's fault, which calibration names)."""
    parameters = dict(model.named_parameters())
    values: dict[Node, torch.Tensor | None] = {}

    def value_of(node: Node) -> torch.Tensor | None:
        if node not in values:
            values[node] = None if node.op == "get_attr" and node.target in parameters else module_value(node)
        return values[node]

    return value_of


def _infinite_input_reason(activations: list[Node], infinite: frozenset[Node]) -> str | None:
    """Why an op reading a value that holds -inf (an additive attention mask) stays float."""
    held = next((a for a in activations if a in infinite), None)
    if held is None:
        return None
    return (f"it reads {held.name}, which holds an infinity or a sentinel known at export (an attention mask's "
            "-inf or finfo.min): in int8 every other value would round to one step")


def _constant_nodes(model: GraphModule) -> set[Node]:
    """Weights (get_attr) and what folds from them."""
    consts: set[Node] = set()
    for node in model.graph.nodes:
        if node.op == "get_attr" or (node.op == "call_function" and foldable(node, consts.__contains__)):
            consts.add(node)
    return consts




def _runtime_float(arg: Any, consts: set[Node]) -> bool:
    """A float tensor computed at run time (not a weight, scalar or tuple)."""
    return _float_tensor(arg) and arg not in consts


def _stored_float(arg: Any, consts: set[Node]) -> bool:
    """A float tensor known at export (a weight, or what folds from weights)."""
    return _float_tensor(arg) and arg in consts


def _stored_operand_reason(runtime: list[Node]) -> str | None:
    """Why an op with a stored operand stays float, or None.

    In int8 it saves a DEQUANTIZE and a QUANTIZE only after an int8 op. After a float op
    it would round its input once more and leave that op float all the same (BERT's
    position embedding added to a gathered embedding, GPT-2's and CLIP's likewise)."""
    if not all(_quantized_output(a) for a in runtime):
        return "a stored operand, and its other input comes from an op that stays float"
    return None


def _int8_view(node: Node) -> bool:
    """Whether `node` is a view (`Int8.view`) annotated to carry int8 values."""
    entry = lookup(node.target) if node.op == "call_function" else None
    return entry is not None and entry.int8 is not None and entry.int8.view and _quantized_output(node)


def _view_run(view: Node) -> set[Node]:
    """The int8 views connected to `view` through one another (in either direction)."""
    run, todo = {view}, [view]
    while todo:
        node = todo.pop()
        for neighbour in (*node.all_input_nodes, *node.users):
            if neighbour not in run and _int8_view(neighbour):
                run.add(neighbour)
                todo.append(neighbour)
    return run


def _beside_int8_op(view: Node, run: set[Node]) -> bool:
    """Whether an op outside the run of views writes `view`'s input in int8 or reads
    `view` as int8."""
    if any(_quantized_output(arg) for arg in view.all_input_nodes if arg not in run):
        return True
    for user in view.users:
        annotation = user.meta.get(ANNOTATION)
        if user not in run and annotation is not None and view in annotation.input_qspec_map:
            return True
    return False


def _quantized_output(node: Node) -> bool:
    """Whether `node`'s value is already annotated to be quantized (an int8 op's output)."""
    annotation = node.meta.get(ANNOTATION)
    return annotation is not None and annotation.output_qspec is not None


def _float_tensor(arg: Any) -> bool:
    val = arg.meta.get("val") if isinstance(arg, Node) else None
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32
