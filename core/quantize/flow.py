"""The quantization step of `export`: float graph in, quantized graph out, ready to lower.

    capture float -> place (partition the float graph) -> annotate, each backend on its
    own nodes -> prepare_pt2e -> calibrate -> convert_pt2e -> capture the Q/DQ graph

Lowering then partitions the quantized graph as usual; each backend's `support`
recognizes the quantized patterns it runs (dequantize -> op -> quantize).

torchao (PT2E) is imported here, inside functions: `import edgeport` never loads it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import operator
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule

from ..backend import Backend
from ..capture import capture
from ..empty_operands import drop_empty_cat_operands
from ..errors import EdgeportError
from ..finite_inputs import FIELD
from ..devtools.html import constant_input_warning
from ..permute_rank import collapse_cats, collapse_expands, collapse_permutes
from ..portable import quiet_torchao_import
from .calibration import CalibrationError, Progress, calibrate, check_batches_given
from .placement import (FLOAT, QUANTIZES, BackendQuantization, Placement, Ran, backend_quantization, place,
                        placed_quantizer)
from .scheme import Scheme, backend_scheme, resolve_scheme

QAT_KEY = "edgeport_qat"  # GraphModule.meta key of a model `prepare_qat` returned
# node.meta["custom"] key naming the float graph's node whose value a node of the
# quantized graph stands for (torch.export keeps "custom" meta through the recapture
# and program files), so `edgeport check` can compare a quantized program with the
# float model op by op.
FLOAT_NODE = "edgeport_float_node"


class QuantizationError(EdgeportError):
    """The model cannot be quantized as asked."""


class SchemeNotOffered(QuantizationError):
    """No selected backend quantizes with the scheme (`refuse_unoffered`); `declined`:
    backend -> why it declines (the conformance kit reports it as the backend's decline)."""

    def __init__(self, message: str, hint: str, declined: dict[str, str]) -> None:
        super().__init__(message, hint)
        self.declined = declined


@dataclass(frozen=True)
class QatState:
    """What `prepare_qat` decided, carried on the fake-quantized model to `export`."""

    scheme: Scheme
    backends: tuple[str, ...]
    placement: Placement


@dataclass
class Quantized:
    """A method's quantized program and what happened on the way."""

    program: ExportedProgram
    placement: Placement
    report: dict[str, Any] = field(default_factory=dict)


QUANTIZE_LOG = "edgeport.quantize"
log = logging.getLogger(QUANTIZE_LOG)

def import_torchao() -> None:
    """Import torchao's PT2E machinery once, without its import-time log lines."""
    try:
        with quiet_torchao_import():
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
            import torchao.quantization.quant_primitives  # noqa: F401  (registers torchao's affine ops)
    except ImportError as exc:
        raise QuantizationError(
            f"quantizing needs torchao: {exc}", hint="pip install 'edgeport[quantize]' (torchao 0.18)"
        ) from exc


def quant_ops() -> frozenset[Any]:
    """The quantize/dequantize ops capture must keep whole (they are the patterns
    backends recognize); registers them (imports torchao)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)

    import_torchao()

    qd, ao = torch.ops.quantized_decomposed, torch.ops.torchao
    return frozenset({
        qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default, qd.quantize_per_tensor.tensor,
        qd.dequantize_per_tensor.tensor, qd.quantize_per_channel.default, qd.dequantize_per_channel.default,
        qd.choose_qparams.tensor, ao.choose_qparams_affine.default, ao.quantize_affine.default,
        ao.dequantize_affine.default,
    })


def recapture(converted: GraphModule, inputs: tuple[Any, ...], dynamic_shapes: Any,
              backends: Mapping[str, Backend]) -> ExportedProgram:
    """The converted graph as an ExportedProgram. It was captured and decomposed (with
    the backends' kept ops) before annotation, and convert adds only quantize/dequantize
    ops, so it is decomposed again only when torch.export left a buffer mutation in it
    (functionalizing that makes it program state); otherwise a second decomposition
    would trace the whole graph again (3 s of MobileNetV2's 5 s) to change nothing."""
    from ..capture import _decompose, _keep_ops, _quiet_torch, drop_proven_assertions

    keep = quant_ops() | {op for b in backends.values() for op in _keep_ops(b)}
    try:
        with _quiet_torch(), _without_grad(converted):
            program = torch.export.export(converted, inputs, dynamic_shapes=dynamic_shapes, strict=False)
            if any(_mutates(node) for node in program.graph.nodes):
                program = _decompose(program, set(keep))
    except Exception as exc:
        raise QuantizationError(f"torch.export could not capture the quantized graph: {type(exc).__name__}: {exc}") from exc
    return drop_proven_assertions(program)


@contextlib.contextmanager
def _without_grad(module: torch.nn.Module):
    """``module``'s parameters as not requiring grad, for the duration.

    The views of the converted graph were traced on the float graph's decomposition,
    whose parameters are plain inputs, and torch picks an attention kernel by whether
    an input requires grad: with a mask computed from a parameter (Swin's relative
    position bias) CPU attention returns its (B, H, T, D) value laid out as (B, T, H,
    D) without grad and contiguous with it. So Swin's ``permute(0, 2, 1, 3).view(B, T,
    H * D)`` of it, a view in the decomposition, failed at recapture: "Cannot view a
    tensor with shape [1, 16, 2, 16] and strides (512, 16, 256, 1)" (cpu int8, qualcomm
    int8 and a16w8 alike)."""
    grads = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in grads:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, needed in grads:
            parameter.requires_grad_(needed)


def _mutates(node: torch.fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable


def refuse_unoffered(backends: Mapping[str, Backend], options: Mapping[str, Any], scheme: Scheme) -> None:
    """Refuse, before any capture, a scheme no selected backend quantizes with (none
    offers it, or their options rule it out): each would decline every node, and the
    export would succeed as a float program in portable torch, its delegation lost
    (cpu with a16w8). A backend that offers the scheme but quantizes none of this
    model's ops (int4 linears too narrow for a group) is for the summary to say."""
    answers = {name: backend_quantization(backend, scheme, options[name]) for name, backend in backends.items()}
    if any(answer.status == QUANTIZES for answer in answers.values()):
        return
    said = "; ".join(_what_it_offers(backends[name], scheme, answer) for name, answer in answers.items())
    raise SchemeNotOffered(f"no selected backend quantizes with {scheme.name}: {said}",
                           hint=f"quantize with a scheme a selected backend offers (with options that allow it), or "
                                f"select one that offers {'a static scheme' if scheme.per_backend else scheme.name} "
                                "(edgeport backends lists each backend's schemes)",
                           declined={name: answer.reason for name, answer in answers.items()})


def _what_it_offers(backend: Backend, scheme: Scheme, answer: BackendQuantization) -> str:
    """E.g. "cpu offers int4-weight, int8, int8-dynamic", or, where the backend offers
    the scheme but its options rule it out, "cpu: int4 weight groups are ..."."""
    offered = sorted(backend.schemes)
    if answer.status == FLOAT:
        return f"{backend.name} offers no scheme"
    if backend_scheme(scheme, frozenset(offered), backend.default_scheme) is not None:  # options rule it out
        return f"{backend.name}: {answer.reason}"
    why = backend.schemes_declined.get(scheme.name)
    return f"{backend.name} offers {', '.join(offered)}" + (f" ({scheme.name}: {why})" if why else "")


def is_qat_model(model: Any) -> bool:
    return isinstance(model, GraphModule) and QAT_KEY in model.meta


def quantize_method(
    model: torch.nn.Module,
    inputs: tuple[Any, ...],
    dynamic_shapes: Any,
    backends: Mapping[str, Backend],
    options: Mapping[str, Any],
    scheme: Scheme | None,
    calibration: Iterable[Any] | None,
    progress: Progress | None = None,
) -> Quantized:
    """Quantize one method for `backends` (priority order) and capture the result."""
    import_torchao()
    report: dict[str, Any] = {}
    if is_qat_model(model):
        state: QatState = model.meta[QAT_KEY]
        _check_qat(state, scheme, backends)
        _check_qat_ran(model)
        scheme, placement = state.scheme, state.placement
        # A copy: convert moves the model to eval and freezes its parameters in place, so
        # exporting it again raised AttributeError ('_frozen_param0'), and training on after
        # an export trained an eval-mode model.
        if calibration is not None:  # said, as for a run-time scheme: a reader may think it recalibrated
            report["calibration"] = "not used: a QAT model's ranges are learned in training"
        converted = _convert(_copy_quietly(model), report, progress, qat=True)
    else:
        if scheme is None:
            raise QuantizationError("no quantization scheme given")
        if scheme.needs_calibration and calibration is None:
            raise CalibrationError(
                f"{scheme.name} needs calibration data to measure activation ranges",
                hint="pass calibration=batches, e.g. [(x1,), (x2,), ...]; random data would calibrate "
                     "ranges real inputs never have, a silent accuracy loss",
            )
        if scheme.needs_calibration:
            check_batches_given(calibration)
        placement, prepared = _prepare(model, inputs, dynamic_shapes, backends, options, scheme, progress)
        if placement.quantizes_nothing():  # no observer to feed: a float program, at once
            if calibration is not None:
                report["calibration"] = "not run: nothing is quantized"
        elif scheme.needs_calibration:
            stats = calibrate(prepared, calibration, progress, examples=inputs)
            report["calibration"] = stats.as_dict()
            for position, value in stats.constant_inputs.items():
                log.warning("quantize=%s: %s", scheme.name, constant_input_warning(position, value, stats.batches))
        else:  # weights are observed on one forward; activations are quantized at run time
            calibrate(prepared, [inputs])
            if calibration is not None:
                report["calibration"] = "not used: the scheme quantizes activations at run time"
        converted = _convert(prepared, report, progress)
    if progress:
        progress("capturing the quantized graph")
    start = time.perf_counter()
    program = recapture(converted, inputs, dynamic_shapes, backends)
    report["capture_seconds"] = round(time.perf_counter() - start, 3)
    report = {"scheme": scheme.name, "description": scheme.describe(placement.quantizing), **report}
    return Quantized(program, placement, report)


def lowered_report(quantized: Quantized, ran: Mapping[str, Ran], fake_quantized: bool) -> dict[str, Any]:
    """The method's quantization report once lowered: each backend's line and whether
    anything is quantized, counted as its artifacts run (`ran`: what each backend runs,
    `report.quantized_counts`; `fake_quantized`: a portable step runs
    quantize/dequantize nodes, where a backend's compile failed). When nothing is, a
    warning says so: the export succeeds, and Python callers see it too."""
    placement = quantized.placement
    backends = placement.summary(ran)
    nothing = placement.quantizes_nothing(ran) and not fake_quantized
    if nothing:
        log.warning("quantize=%s: nothing is quantized, the program runs in float (%s)", quantized.report["scheme"],
                    "; ".join(f"{name}: {line}" for name, line in backends.items()))
    report = dict(quantized.report)
    return {"scheme": report.pop("scheme"), "description": report.pop("description"), "backends": backends,
            "quantizes_nothing": nothing, **report, FIELD: quantized_inputs(quantized.program)}


# The ops that quantize a float value (or measure it to, at run time): an input one reads
# directly must be finite (finite_inputs.py).
_ENTRY_QUANTIZE = ("quantized_decomposed.quantize_per", "quantized_decomposed.choose_qparams", "torchao.quantize_affine",
                   "torchao.choose_qparams")


def quantized_inputs(program: ExportedProgram) -> list[int]:
    """The positions of the method inputs a quantize node reads directly, which each call
    of the program then checks for NaN and infinity (finite_inputs.py)."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [i for i, name in enumerate(program.graph_signature.user_inputs)
            if any(str(user.target).startswith(_ENTRY_QUANTIZE) for user in placeholders[name].users)]


def prepare_qat_model(
    model: torch.nn.Module,
    inputs: tuple[Any, ...],
    backends: Mapping[str, Backend],
    options: Mapping[str, Any],
    scheme: str | Scheme,
) -> GraphModule:
    """The fake-quantized model to fine-tune (see `edgeport.prepare_qat`)."""
    import_torchao()
    scheme = resolve_scheme(scheme)
    if not scheme.needs_calibration:
        raise QuantizationError(
            f"quantization-aware training applies to static schemes, not {scheme.name}",
            hint="use quantize='int8' (its activation ranges are learned while training)",
        )
    refuse_unoffered(backends, options, scheme)  # the model would train with no quantization in it
    qat = dataclasses.replace(scheme, qat=True)
    placement, prepared = _prepare(model, inputs, None, backends, options, qat, progress=None, for_qat=True)
    prepared.meta[QAT_KEY] = QatState(qat, tuple(backends), placement)
    return prepared


def capture_float(model: torch.nn.Module, inputs: tuple[Any, ...], backends: Mapping[str, Backend],
                  options: Mapping[str, Any], dynamic_shapes: Any = None) -> ExportedProgram:
    """The float model as quantization captures it, the graph its ops' `FLOAT_NODE` tags
    name (`edgeport check --quantize` compares with it: captured otherwise, the nodes
    these rewrites add were no counterpart of anything, and the check was refused)."""
    float_program = capture(model, inputs, list(backends.values()), options, dynamic_shapes)
    # Before annotating, as export does before lowering: a view the rewrite adds after
    # quantizing sat between a dequantize and the next op, and QNN ran it in fp16 (Swin).
    collapse_permutes(float_program)
    collapse_expands(float_program)
    collapse_cats(float_program)
    drop_empty_cat_operands(float_program)
    return float_program


def _prepare(model, inputs, dynamic_shapes, backends, options, scheme: Scheme, progress, for_qat: bool = False):
    """Capture the float model, place it, and insert each owner's observers."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    float_program = capture_float(model, inputs, backends, options, dynamic_shapes)
    tag_float_nodes(float_program.graph)
    placement = place(float_program, backends, options, scheme)
    if progress:
        progress(f"placing for {scheme.name}: " + "; ".join(f"{b} {s}" for b, s in placement.summary().items()))
    module = float_program.module()
    fold_batch_norms(module, placement.owner)
    prepare = prepare_qat_pt2e if for_qat else prepare_pt2e
    try:
        prepared = prepare(module, placed_quantizer(placement))
    except Exception as exc:
        raise QuantizationError(f"inserting observers failed: {type(exc).__name__}: {exc}") from exc
    return placement, prepared


def tag_float_nodes(graph: torch.fx.Graph) -> None:
    """Name each op node's float counterpart (itself) in its "custom" meta (`FLOAT_NODE`)."""
    for node in graph.nodes:
        if node.op == "call_function":
            node.meta.setdefault("custom", {})[FLOAT_NODE] = node.name


def fold_batch_norms(model: GraphModule, owner: Mapping[str, str]) -> int:
    """Fold each inference batch norm into the convolution before it (same owner, the
    conv's only reader, a weight of its own) and return how many were folded.

    The weights are then observed as they will be stored. It also keeps torchao's
    convert from searching the graph for QAT conv-bn patterns, which it does (tracing
    some 100 patterns, ~50 s) whenever any batch norm is left.
    """
    from torchao.quantization.pt2e.utils import fold_bn_weights_into_conv_node

    aten = torch.ops.aten
    folded = 0
    for bn in list(model.graph.nodes):
        if bn.target != aten._native_batch_norm_legit_no_training.default:
            continue
        conv = bn.args[0]
        if not (isinstance(conv, torch.fx.Node) and conv.target == aten.convolution.default) or conv.args[6]:
            continue
        weight, bias = conv.args[1], conv.args[2]
        params = [weight, *bn.args[1:5]] + ([bias] if bias is not None else [])
        if len(conv.users) != 1 or owner.get(conv.name) != owner.get(bn.name):
            continue
        if any(not (isinstance(p, torch.fx.Node) and p.op == "get_attr") for p in params) or len(weight.users) != 1:
            continue
        normalized = next((u for u in bn.users if u.target is operator.getitem and u.args[1] == 0), None)
        if normalized is not None and FLOAT_NODE in conv.meta.get("custom", {}):
            conv.meta["custom"][FLOAT_NODE] = normalized.name  # the folded conv computes the norm's output
        fold_bn_weights_into_conv_node(conv, weight, bias, bn, model)
        folded += 1
    if folded:
        model.graph.eliminate_dead_code()
        model.recompile()
    return folded


def _convert(prepared: GraphModule, report: dict[str, Any], progress: Progress | None, qat: bool = False) -> GraphModule:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if progress:
        progress("converting observers to quantize/dequantize ops")
    start = time.perf_counter()
    if qat:
        move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    report["convert_seconds"] = round(time.perf_counter() - start, 3)
    return converted


def _check_qat(state: QatState, scheme: Scheme | None, backends: Mapping[str, Backend]) -> None:
    if scheme is not None and scheme.name != state.scheme.name:
        raise QuantizationError(
            f"the model was prepared for quantization-aware training with {state.scheme.name}, not {scheme.name}",
            hint=f"export it with quantize={state.scheme.name!r} (or leave quantize out)",
        )
    if tuple(backends) != state.backends:
        raise QuantizationError(
            f"the model was prepared for backends {', '.join(state.backends)}, not {', '.join(backends)}",
            hint="export a QAT model with the backends it was prepared for: each node's quantizer depends on them",
        )


def _copy_quietly(model: GraphModule) -> GraphModule:
    """A deep copy of a QAT model, without torch's FutureWarning about its own pytree
    specs ("isinstance(treespec, LeafSpec) is deprecated"), printed twice per export
    from copyreg: torch's code, nothing the user can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        return copy.deepcopy(model)


def _check_qat_ran(model: GraphModule) -> None:
    """Refuse a QAT model whose fake-quantize modules never observed a value: it was
    exported before any forward pass (training the original module, not the prepared
    one, is the usual slip). Each range would be torchao's default, which only warns
    ("must run observer before calling calculate_qparams"): a conv-relu-conv exported
    so was 0.0 dB from float."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    fakes = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    unobserved = [m for m in fakes if _never_observed(getattr(m, "activation_post_process", None))]
    if unobserved:
        raise QuantizationError(
            f"the QAT model has not run: {len(unobserved)} of its {len(fakes)} fake-quantize module(s) never "
            "observed a value, so their ranges are torchao's defaults",
            hint="train the model edgeport.prepare_qat returned (its forward passes learn the ranges), not the "
                 "module it was prepared from, then export it",
        )


def _never_observed(observer: Any) -> bool:
    """A min/max observer that saw nothing keeps min +inf and max -inf."""
    low, high = getattr(observer, "min_val", None), getattr(observer, "max_val", None)
    return isinstance(low, torch.Tensor) and isinstance(high, torch.Tensor) and low.numel() > 0 \
        and bool((low > high).all())
