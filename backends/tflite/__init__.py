"""Our TFLite flatbuffer writer and LiteRT runner, shared by the cpu and mediatek backends.

- `writer_support(node, ctx)`: can the writer write this node? (the lowering table's answer)
- `write_tflite(program, fp16=False)`: an edge partition as a `TfliteModel` (bytes + I/O facts)
- `TfliteExecutable(model_bytes, threads)`: run it with LiteRT and its XNNPACK delegate
- `KEEP_OPS`: ops worth keeping undecomposed at capture (written better whole)

Importing this package is cheap: the schema and the interpreter are imported when used.
"""

from .keep import KEEP_OPS
from .runner import TfliteExecutable, interpreter_missing, runtime_version
from .schema import writer_deps_missing
from .writer import TfliteModel, write_tflite, writer_support

__all__ = [
    "KEEP_OPS",
    "TfliteExecutable",
    "TfliteModel",
    "interpreter_missing",
    "runtime_version",
    "write_tflite",
    "writer_deps_missing",
    "writer_support",
]
