"""Our TFLite flatbuffer writer and LiteRT runner, shared by the cpu and mediatek backends.

- `writer_support(node, ctx)`: can the writer write this node? (the lowering table's answer)
- `written_ops(node, ctx)`: the TFLite ops it would write for it (besides `PLUMBING`)
- `constant_nodes(program)`: the nodes it folds to constants at compile time
- `write_tflite(program, fp16=False)`: an edge partition as a `TfliteModel` (bytes + I/O facts)
- `TfliteExecutable(model_bytes, threads)`: run it with LiteRT and its XNNPACK delegate
- `merge_models(models, keys, io_names)`: several models as one, a subgraph each, weights once;
  `TfliteEntries(model_bytes, keys, io_names, threads)` runs such a model, ``entry(i)`` per subgraph
- `KEEP_OPS`: ops worth keeping undecomposed at capture (written better whole)

Importing this package is cheap: the schema and the interpreter are imported when used.
"""

from .keep import KEEP_OPS
from .merge import merge_models
from .runner import TfliteEntries, TfliteExecutable, interpreter_missing, runtime_version
from .schema import writer_deps_missing
from .lowering import PLUMBING
from .writer import TfliteModel, constant_nodes, write_tflite, writer_support, written_ops

__all__ = [
    "KEEP_OPS",
    "PLUMBING",
    "TfliteEntries",
    "TfliteExecutable",
    "TfliteModel",
    "constant_nodes",
    "interpreter_missing",
    "merge_models",
    "runtime_version",
    "write_tflite",
    "writer_deps_missing",
    "writer_support",
    "written_ops",
]
