"""The TFLite flatbuffer schema, imported only when a model is actually written.

The generated schema module ships inside `ai_edge_litert`; importing it loads the
LiteRT shared library, so nothing here runs at `import edgeport.backends.tflite`.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any


@functools.cache
def tfl() -> ModuleType:
    """The generated `tflite` schema module (enums, builders)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as e:  # pragma: no cover - depends on the environment
        from edgeport import BackendError

        raise BackendError(
            f"cannot write TFLite models: {e}",
            hint="install the cpu extra: pip install 'edgeport[cpu]' (ai-edge-litert, flatbuffers)",
        ) from e
    return schema_py_generated


def writer_deps_missing() -> str:
    """Why the writer cannot run here, or "" when its dependencies import."""
    try:
        tfl()
    except Exception as e:  # noqa: BLE001 - any import failure disables the writer
        return str(e)
    return ""


# Torch dtype -> name of the TensorType the tensor has *inside* the artifact. int64
# lives as int32 inside (TFLite kernels mostly lack int64); the partition boundary
# keeps the declared dtype with a CAST on each side.
# Keyed by the dtype's name ("float32"), so reading this module needs no torch.
TENSOR_TYPE_NAMES: dict[str, str] = {
    "float32": "FLOAT32",
    "float16": "FLOAT16",
    "int32": "INT32",
    "int64": "INT32",
    "bool": "BOOL",
    "int8": "INT8",
    "uint8": "UINT8",
}

BOUNDARY_TYPE_NAMES: dict[str, str] = {**TENSOR_TYPE_NAMES, "int64": "INT64"}


def tensor_type(dtype: Any, boundary: bool = False) -> int:
    """The TensorType enum value for a torch dtype (inside the artifact, or at its boundary)."""
    names = BOUNDARY_TYPE_NAMES if boundary else TENSOR_TYPE_NAMES
    return getattr(tfl().TensorType, names[str(dtype).removeprefix("torch.")])
