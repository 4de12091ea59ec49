"""The TFLite model as written, judged op by op against NeuroPilot's rules.

Support answers ahead of time from the writer's `written_ops`; this reads what the
writer actually wrote, so whatever the plugin would leave to LiteRT's CPU is found
before the artifact is made, and blamed on the node that wrote it. The writer names every tensor a node
writes after the node ("conv", "conv/bias", "split/1"), so an op's node is the name of
its first output up to the first "/".
"""

from __future__ import annotations

from dataclasses import dataclass

from . import neuropilot


@dataclass(frozen=True)
class Tensor:
    name: str
    type: str  # TensorType name, e.g. "FLOAT32"
    shape: tuple[int, ...]
    constant: bool
    quantization: neuropilot.TensorQuantization | None = None  # None: no quantization parameters


@dataclass(frozen=True)
class WrittenOp:
    op: str  # BuiltinOperator name, e.g. "CONV_2D"
    node: str  # the node whose value the op writes
    tensors: tuple[Tensor, ...]  # inputs, then outputs


def read_ops(data: bytes) -> list[WrittenOp]:
    """The operators of a TFLite model's first subgraph, in order."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append(op_names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])

    def tensor(index: int) -> Tensor:
        t = graph.Tensors(index)
        buffer = model.Buffers(t.Buffer()) if t.Buffer() else None
        constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        return Tensor(t.Name().decode(), type_names[t.Type()], shape, constant, _quantization(t, schema))

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        inputs = [tensor(j) for j in op.InputsAsNumpy() if j >= 0] if op.InputsLength() else []
        outputs = [tensor(j) for j in op.OutputsAsNumpy()] if op.OutputsLength() else []
        node = outputs[0].name.split("/", 1)[0] if outputs else ""
        ops.append(WrittenOp(codes[op.OpcodeIndex()], node, tuple(inputs + outputs)))
    return ops


def _quantization(tensor, schema) -> neuropilot.TensorQuantization | None:  # noqa: ANN001 - flatbuffer objects
    """How a flatbuffer tensor is quantized, told apart as LiteRT does when it loads a
    model: blockwise details, else one scale per tensor or one per channel."""
    q = tensor.Quantization()
    if q is None:
        return None
    symmetric = not q.ZeroPointLength() or not q.ZeroPointAsNumpy().any()
    if q.DetailsType() == schema.QuantizationDetails.BlockwiseQuantization:
        return neuropilot.TensorQuantization(neuropilot.BLOCKWISE, symmetric)
    if not q.ScaleLength():
        return None
    granularity = neuropilot.PER_TENSOR if q.ScaleLength() == 1 else neuropilot.PER_CHANNEL
    return neuropilot.TensorQuantization(granularity, symmetric)


def op_refusal(op: WrittenOp) -> str | None:
    """Why LiteRT's MediaTek plugin would leave `op` to LiteRT's CPU, or None."""
    reason = neuropilot.op_rule(op.op, f"{op.op} (written for node {op.node})")
    for t in op.tensors:
        if reason:
            break
        what = f"tensor {t.name!r} of {op.op}"
        reason = neuropilot.rank_rule(t.shape, what) or neuropilot.tensor_type_rule(t.type, t.constant, what, t.quantization)
    return reason


def refusals(data: bytes) -> list[tuple[WrittenOp, str]]:
    """Every op of the model the plugin would not take, with its reason."""
    return [(op, reason) for op in read_ops(data) if (reason := op_refusal(op))]


def quantized_types(data: bytes) -> list[str]:
    """The integer TensorTypes of the model's quantized runtime tensors ("INT8"), sorted:
    what its quantized ops compute in."""
    return sorted({t.type for op in read_ops(data) for t in op.tensors
                   if not t.constant and t.quantization is not None and t.type in neuropilot.QUANTIZED_TYPES})
