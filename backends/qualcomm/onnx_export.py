"""Partition ExportedProgram → ONNX, remembering which aten node each ONNX node came from.

QNN reports refusals by ONNX node; the partitioner thinks in aten nodes. The exporter
records an FX node per ONNX node (``pkg.torch.onnx.fx_node``), but of its *own* FX graph:
it decomposes the program again, which renames nodes (``add`` can come out as
``add_21``, and an ``adaptive_avg_pool2d`` as dozens of ``select``/``index`` nodes). What
survives that re-tracing unchanged is each node's ``stack_trace`` meta, copied to every
node a decomposition makes and written out as ``pkg.torch.onnx.stack_trace``. So for
the export we set it to ``edgeport-node:<aten node name>`` (and restore it afterwards).

The exported model is then adjusted where QNN HTP computes an ONNX op wrongly but an
equivalent form rightly (pool_rewrite.py: pools that pad themselves; pow_rewrite.py:
integer powers, wrong at zero; sign_rewrite.py: a float Sign, 0 past fp16's range;
native_norm.py: RMS norms as HTP's native RmsNorm, the chain being wrong in fp16;
fp16_rms_norms.py: int8 RMS norms in fp16, HTP's uint8 kernel flooring), or prepares
only in an equivalent form (norm_rewrite.py: RMS norms left as a chain, with the scale
first).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import edgeport
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from .initializer_casts import fold_initializer_casts
from .linear_rows import linears_as_rows
from .attention import masked_rows_guarded
from .fp16_rms_norms import rms_norms_in_fp16
from .native_norm import fuse_rms_norms
from .norm_rewrite import reorder_norm_scales
from .pool_rewrite import rewrite_pools
from .pow_rewrite import rewrite_integer_powers
from .provenance import PROVENANCE, recorded
from .scalar_operands import quantize_scalar_operands
from .sign_rewrite import clip_float_signs

# ONNX 21: the first opset whose QuantizeLinear/DequantizeLinear take 16-bit integers
# (a16w8's uint16 activations; ONNX Runtime rejects them in an opset-20 model). Float
# partitions keep the exporter's default opset, which the float op table was verified on.
QUANTIZED_OPSET = 21


@dataclass(frozen=True)
class OnnxPartition:
    """A partition as ONNX: `inputs[i]` is the ONNX input fed by the partition's i-th user
    input, `outputs[i]` the ONNX output holding its i-th output."""

    model: Any  # onnx.ModelProto
    inputs: list[str]
    outputs: list[str]


def export_onnx(program: ExportedProgram) -> OnnxPartition:
    """Export with torch.onnx (dynamo, onnxscript); quiet, since it prints progress."""
    import torch

    from edgeport.quantize.node_dtypes import is_quantization_node

    quantized = any(is_quantization_node(node) for node in program.graph.nodes)
    with _quiet_exporter(), _without_slices_split(), _provenance_tags(program), masked_rows_guarded(program), \
            _explicit_reduction_dims(program):
        try:
            onnx_program = torch.onnx.export(program, (), dynamo=True, verbose=False, optimize=True,
                                             opset_version=QUANTIZED_OPSET if quantized else None)
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise edgeport.BackendError(
                f"qualcomm: torch.onnx could not export the partition: {_first_line(exc)}",
                hint="decline the offending op in support() or report it with the partition's graph",
            ) from exc
    model = onnx_program.model_proto
    if quantized:
        linears_as_rows(model)  # a per-channel weight's DQ only before a Gemm, over 2-d rows
        quantize_scalar_operands(model)  # x * 0.5 quantized as a whole, not in float
    rewrite_pools(model)
    clip_float_signs(model)  # HTP's Sign: 0 past fp16's range, ±inf included
    fuse_rms_norms(model)
    reorder_norm_scales(model)  # a norm chain left (axes not trailing)
    if quantized:
        rms_norms_in_fp16(model)  # int8: HTP's uint8 RmsNorm floors
    else:  # (a16w8 computes in 16-bit integers: no signed zero)
        rewrite_integer_powers(model)
    fold_initializer_casts(model)  # a large per-channel zero point's Cast: QNN needs it static
    onnx_inputs = [value.name for value in model.graph.input]
    onnx_outputs = [value.name for value in model.graph.output]
    user_inputs = [
        spec.arg.name for spec in program.graph_signature.input_specs if spec.kind == InputKind.USER_INPUT
    ]
    # The exporter keeps user inputs and outputs in order (names may differ: a sub-program
    # built by the core can come out as arg_0, ...); a count mismatch means it did not.
    expected = (len(user_inputs), len(program.graph_signature.output_specs))
    if (len(onnx_inputs), len(onnx_outputs)) != expected:
        raise edgeport.BackendError(
            f"qualcomm: the ONNX export has {len(onnx_inputs)} inputs / {len(onnx_outputs)} outputs, "
            f"the partition {expected[0]} / {expected[1]}",
            hint="report this with the partition's graph: torch.onnx changed how it exports inputs",
        )
    return OnnxPartition(model=model, inputs=onnx_inputs, outputs=onnx_outputs)


def aten_node_names(model: Any) -> list[str | None]:
    """Per ONNX node (in graph order), the partition's aten node it was exported from.

    A node the ONNX optimizer made (e.g. a final Cast) has no record; it belongs to the
    aten node producing its first input, else to the one reading its output.
    """
    nodes = list(model.graph.node)
    names = [recorded(node) for node in nodes]
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    for i, node in enumerate(nodes):  # graph order: producers are resolved first
        if names[i] is None and node.input and node.input[0] in producer:
            names[i] = names[producer[node.input[0]]]
    for i in reversed(range(len(nodes))):
        if names[i] is None:
            readers = [j for j, other in enumerate(nodes) if set(other.input) & set(nodes[i].output)]
            names[i] = next((names[j] for j in readers if names[j]), None)
    return names


@contextlib.contextmanager
def _provenance_tags(program: ExportedProgram):
    """Tag every op node's stack_trace with its name for the export, then put it back."""
    saved = {node: node.meta.get("stack_trace") for node in program.graph.nodes if node.op == "call_function"}
    for node in saved:
        node.meta["stack_trace"] = PROVENANCE + node.name
    try:
        yield
    finally:
        for node, trace in saved.items():
            if trace is None:
                node.meta.pop("stack_trace", None)
            else:
                node.meta["stack_trace"] = trace


@contextlib.contextmanager
def _explicit_reduction_dims(program: ExportedProgram):
    """amax/amin over every dim written with the dims listed, for the export, then put
    back: torch.onnx cannot export them with no dim given (the OpInfo sweep's aminmax)."""
    import torch

    reductions = (torch.ops.aten.amax.default, torch.ops.aten.amin.default)
    saved = {node: node.args for node in program.graph.nodes
             if node.target in reductions and not (node.args[1:] and node.args[1]) and "dim" not in node.kwargs
             and node.args[0].meta["val"].dim() > 0}
    for node in saved:
        node.args = (node.args[0], list(range(node.args[0].meta["val"].dim())), *node.args[2:])
    if saved:
        program.graph_module.recompile()
    try:
        yield
    finally:
        for node, args in saved.items():
            node.args = args
        if saved:
            program.graph_module.recompile()


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress to stdout and logs warnings about optional packages."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _without_slices_split():
    """torch.onnx's optimizer without onnxscript's ``SlicesSplit`` rule (two Slices of one
    tensor's halves -> one Split). Its matcher walks every node of the graph once per
    Slice node: a Llama's rotary halves put two Slices per layer on q and on k, and the
    QDQ graph of a16w8 has three times the float one's nodes, so at 30 layers this one
    rule held the export for most of its time. Without it, SmolLM2's ``edgeport llm export
    --quantize a16w8`` takes 332 CPU-s against 758 (a 30-layer tiny Llama: 269 against
    779), with the same greedy tokens in the simulator (bench/README.md, "qualcomm
    a16w8"). QNN takes the two Slices (StridedSlice) as it takes a Split. The rule list is onnxscript's private
    ``rewriter._DEFAULT_REWRITE_RULES``, read at each optimize; where it is missing, the
    optimizer runs as it comes."""
    try:
        from onnxscript import rewriter
        from onnxscript.rewriter.rules.common import slice_split_rule
    except ImportError:
        yield
        return
    default = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if default is None:
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(rule for rule in default if rule is not slice_split_rule)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = default


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
