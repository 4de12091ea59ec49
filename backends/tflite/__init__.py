"""Our TFLite flatbuffer writer and LiteRT runner, shared by the cpu and mediatek backends.

- `writer_support(node, ctx)`: can the writer write this node? (the lowering table's answer)
- `WriterContext(program)`: what those answers know about the whole program, worked out
  once: a backend's `prepare` returns it, so `support` finds it as ``ctx.prepared``
- `written_ops(node, ctx)`: the TFLite ops it would write for it (besides `PLUMBING`)
- `constant_nodes(program)`: the nodes it folds to constants at compile time
- `is_quantization_op(node)`: a quantize/dequantize node of a quantized (PT2E) graph;
  `is_affine_quantization_op(node)`: one of run-time (per token) or group-wise quantization
- `write_tflite(program, fp16=False)`: an edge partition as a `TfliteModel` (bytes + I/O facts)
- `TfliteExecutable(model_bytes, threads)`: run it with LiteRT and its XNNPACK delegate;
  `undelegated_ops(interpreter)`: what XNNPACK left to TFLite's own kernels
- `CompiledExecutable(model_bytes, threads, checksum=...)`: the same through LiteRT's
  compiled model (C API, `litert_c`), weights packed once into XNNPACK's weight cache
  file and inputs in place: how an LLM's one-graph model runs (a fraction of the memory)
- `merge_models(models, keys, io_names)`: several models as one, a subgraph each, weights once;
  `TfliteEntries(model_bytes, keys, io_names, threads)` runs such a model, ``entry(i)`` per subgraph
- `KEEP_OPS`: ops worth keeping undecomposed at capture (written better whole)
- `SCHEMES`, `quantizer_for(scheme)`: the quantization schemes the writer writes, and
  the PT2E quantizer that annotates a graph as the writer writes it (imports torchao)

Importing this package is cheap: the schema and the interpreter are imported when used.
It imports no torch either: the run side (runner, merge, schema) is imported here, and
the writer's names (which need torch) are imported on first use, so a device without
torch runs a .tflite artifact with this package and LiteRT alone.
"""

from edgeport.lazy import imported_on_first_use

from .compiled import CompiledExecutable
from .merge import merge_models
from .runner import TfliteEntries, TfliteExecutable, interpreter_missing, runtime_version, undelegated_ops
from .schema import writer_deps_missing

# The compile side: name -> the module defining it, imported when first used (it imports torch).
_WRITER_SIDE = {
    "KEEP_OPS": ".keep",
    "PLUMBING": ".lowering",
    "is_quantization_op": ".qdq",
    "is_affine_quantization_op": ".qdq",
    "TfliteModel": ".writer",
    "WriterContext": ".writer",
    "constant_nodes": ".writer",
    "write_tflite": ".writer",
    "writer_support": ".writer",
    "written_ops": ".writer",
}


__getattr__ = imported_on_first_use(__name__, _WRITER_SIDE)

# int8: QS8 kernels; int8-dynamic / int4-weight: integer-weight FULLY_CONNECTEDs.
SCHEMES = frozenset({"int8", "int8-dynamic", "int4-weight"})


def quantizer_for(scheme, xnnpack_only: bool = False):  # noqa: ANN001, ANN201 - edgeport.Scheme -> Quantizer
    """The PT2E quantizer for `scheme` (one of `SCHEMES`); `xnnpack_only` leaves float
    the ops XNNPACK does not run in int8."""
    from .quantizer import TfliteQuantizer

    return TfliteQuantizer(scheme, xnnpack_only)

__all__ = [
    "CompiledExecutable",
    "KEEP_OPS",
    "PLUMBING",
    "SCHEMES",
    "TfliteEntries",
    "TfliteExecutable",
    "TfliteModel",
    "WriterContext",
    "constant_nodes",
    "interpreter_missing",
    "is_affine_quantization_op",
    "is_quantization_op",
    "quantizer_for",
    "merge_models",
    "runtime_version",
    "undelegated_ops",
    "write_tflite",
    "writer_deps_missing",
    "writer_support",
    "written_ops",
]
