"""Our TFLite flatbuffer writer and LiteRT runner, shared by the cpu and mediatek backends.

- `writer_support(node, ctx)`: can the writer write this node? (the lowering table's answer)
- `written_ops(node, ctx)`: the TFLite ops it would write for it (besides `PLUMBING`)
- `constant_nodes(program)`: the nodes it folds to constants at compile time
- `is_quantization_op(node)`: a quantize/dequantize node of a quantized (PT2E) graph;
  `is_affine_quantization_op(node)`: one of run-time (per token) or group-wise quantization
- `write_tflite(program, fp16=False)`: an edge partition as a `TfliteModel` (bytes + I/O facts)
- `TfliteExecutable(model_bytes, threads)`: run it with LiteRT and its XNNPACK delegate;
  `undelegated_ops(interpreter)`: what XNNPACK left to TFLite's own kernels
- `merge_models(models, keys, io_names)`: several models as one, a subgraph each, weights once;
  `TfliteEntries(model_bytes, keys, io_names, threads)` runs such a model, ``entry(i)`` per subgraph
- `KEEP_OPS`: ops worth keeping undecomposed at capture (written better whole)
- `SCHEMES`, `quantizer_for(scheme)`: the quantization schemes the writer writes, and
  the PT2E quantizer that annotates a graph as the writer writes it (imports torchao)

Importing this package is cheap: the schema and the interpreter are imported when used.
"""

from .keep import KEEP_OPS
from .merge import merge_models
from .runner import TfliteEntries, TfliteExecutable, interpreter_missing, runtime_version, undelegated_ops
from .schema import writer_deps_missing
from .lowering import PLUMBING
from .qdq import is_affine_op as is_affine_quantization_op
from .qdq import is_quantization_op
from .writer import TfliteModel, constant_nodes, write_tflite, writer_support, written_ops

# int8: QS8 kernels; int8-dynamic / int4-weight: integer-weight FULLY_CONNECTEDs.
SCHEMES = frozenset({"int8", "int8-dynamic", "int4-weight"})


def quantizer_for(scheme, xnnpack_only: bool = False):  # noqa: ANN001, ANN201 - edgeport.Scheme -> Quantizer
    """The PT2E quantizer for `scheme` (one of `SCHEMES`); `xnnpack_only` leaves float
    the ops XNNPACK does not run in int8."""
    from .quantizer import TfliteQuantizer

    return TfliteQuantizer(scheme, xnnpack_only)

__all__ = [
    "KEEP_OPS",
    "PLUMBING",
    "SCHEMES",
    "TfliteEntries",
    "TfliteExecutable",
    "TfliteModel",
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
