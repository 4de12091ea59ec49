"""Whether this LiteRT's XNNPACK takes a model's INT4 FULLY_CONNECTEDs, asked of a small model.

A FULLY_CONNECTED with blockwise INT4 weights runs right only inside XNNPACK: TFLite's own
kernel does not read the block scales and computes garbage (runner.new_interpreter). LiteRT's
C API cannot say which operators its delegate left, so before a compiled LLM model first
builds its weight cache the Interpreter checks. Loading the whole model for that copies its
bytes and packs every weight a second time: SmolLM2 int4 peaked at 435 MiB on its first load
against 247 on later ones (bench/README.md, "Memory").

What XNNPACK decides for an operator depends on its tensors' types, shapes and quantization
and on its options, not on the weights' values. So the check runs on a probe: one copy of each
distinct INT4 FULLY_CONNECTED (SmolLM2: 4 of its 120), with its own tensors and constants,
each input a model input and each output a model output. If the probe's operators are all
delegated, the model's are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .schema import tfl


def check_delegated(model: Any, threads: int = 0) -> None:
    """Raise `BackendError` unless this LiteRT's XNNPACK takes every INT4 FULLY_CONNECTED
    of ``model`` (bytes or a view), judged on its probe; nothing to check passes."""
    from edgeport import BackendError

    from .runner import new_interpreter, undelegated_ops

    probe = probe_model(model)
    if probe is None:
        return
    interpreter = new_interpreter(probe, threads)
    left = [op for op in undelegated_ops(interpreter) if op.endswith(":FULLY_CONNECTED")]
    if left:
        raise BackendError(
            f"LiteRT's XNNPACK delegate does not take {len(left)} of this model's forms of FULLY_CONNECTED with "
            "blockwise INT4 weights (checked on one operator of each form), and TFLite's kernels cannot run them",
            hint="re-export with --quantize int8-dynamic, or run with a LiteRT whose XNNPACK takes these ops",
        )


def probe_model(model: Any) -> bytes | None:
    """The probe of ``model`` (a .tflite's bytes or a view of them), or None when it has
    no FULLY_CONNECTED with INT4 weights."""
    t = tfl()
    root = t.Model.GetRootAs(model, 0)
    codes = [i for i in range(root.OperatorCodesLength())
             if _builtin(root.OperatorCodes(i)) == t.BuiltinOperator.FULLY_CONNECTED]
    if not codes:
        return None
    probe, graph = t.ModelT(), t.SubGraphT()
    probe.version, probe.buffers = 3, [t.BufferT()]  # buffer 0: no data, by the schema's convention
    probe.operatorCodes = [t.OperatorCodeT.InitFromObj(root.OperatorCodes(codes[0]))]
    graph.tensors, graph.operators, graph.inputs, graph.outputs = [], [], [], []
    seen: set[tuple] = set()
    for source in (root.Subgraphs(i) for i in range(root.SubgraphsLength())):
        for op in (source.Operators(i) for i in range(source.OperatorsLength())):
            weight = int(op.Inputs(1)) if op.OpcodeIndex() in codes and op.InputsLength() > 1 else -1
            if weight < 0 or source.Tensors(weight).Type() != t.TensorType.INT4:
                continue
            form = _signature(source, op)
            if form not in seen:
                seen.add(form)
                _copy_operator(model, root, source, op, probe, graph)
    if not graph.operators:
        return None
    probe.subgraphs = [graph]
    builder = _builder()
    builder.Finish(probe.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _copy_operator(model: Any, root: Any, source: Any, op: Any, probe: Any, graph: Any) -> None:
    """Append ``op`` to the probe's graph with copies of its tensors: constants keep their
    data (inline, or stored past the flatbuffer at an offset), every other input becomes a
    model input and every output a model output."""
    t = tfl()
    remap: dict[int, int] = {}

    def copy(index: int) -> int:
        if index < 0:
            return index
        if index not in remap:
            tensor = t.TensorT.InitFromObj(source.Tensors(index))
            stored = root.Buffers(tensor.buffer) if tensor.buffer > 0 else None
            tensor.buffer = 0
            if stored is not None and (not stored.DataIsNone() or stored.Offset() > 1):
                data = t.BufferT()
                data.data = stored.DataAsNumpy() if not stored.DataIsNone() else \
                    np.frombuffer(model, np.uint8, stored.Size(), stored.Offset())
                probe.buffers.append(data)
                tensor.buffer = len(probe.buffers) - 1
            details = tensor.quantization.details if tensor.quantization is not None else None
            if isinstance(details, t.BlockwiseQuantizationT):  # its scales (and zero points) are tensors too
                details.scales = copy(details.scales)
                details.zeroPoints = copy(details.zeroPoints)
            graph.tensors.append(tensor)
            remap[index] = len(graph.tensors) - 1
        return remap[index]

    operator = t.OperatorT.InitFromObj(op)
    operator.opcodeIndex = 0
    operator.inputs = [copy(int(i)) for i in op.InputsAsNumpy()]
    operator.outputs = [copy(int(i)) for i in op.OutputsAsNumpy()]
    graph.inputs += [i for i in operator.inputs if i >= 0 and graph.tensors[i].buffer == 0 and i not in graph.inputs]
    graph.outputs += operator.outputs
    graph.operators.append(operator)


def _signature(source: Any, op: Any) -> tuple:
    """What XNNPACK's decision can depend on: each tensor's type, shape, shape signature
    and quantization layout (a blockwise one with its scales' and zero points' tensors),
    and the operator's options."""
    t = tfl()

    def tensor(index: int) -> tuple | None:
        if index < 0:
            return None
        it = source.Tensors(index)
        q = t.TensorT.InitFromObj(it).quantization
        layout: tuple = ()
        if q is not None:
            details = q.details
            blockwise = (details.blockSize, tensor(details.scales), tensor(details.zeroPoints)) \
                if isinstance(details, t.BlockwiseQuantizationT) else None
            layout = (q.detailsType, len(q.scale if q.scale is not None else ()), q.quantizedDimension, blockwise)
        return (it.Type(), tuple(it.ShapeAsNumpy().tolist()) if it.ShapeLength() else (),
                tuple(it.ShapeSignatureAsNumpy().tolist()) if it.ShapeSignatureLength() else (), layout)

    options = t.OperatorT.InitFromObj(op).builtinOptions
    return (tuple(tensor(int(i)) for i in op.InputsAsNumpy()), tuple(tensor(int(i)) for i in op.OutputsAsNumpy()),
            op.BuiltinOptionsType(), tuple(sorted(vars(options).items())) if options is not None else ())


def _builtin(code: Any) -> int:
    """An operator code's builtin operator (the schema keeps small ones in a deprecated field)."""
    return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())


def _builder() -> Any:
    import flatbuffers

    return flatbuffers.Builder(1 << 20)
