"""edgeport: export a PyTorch model once, run its pieces on the edge backends that fit.

Plugins import only the names listed in ``__all__``.

Two layers: the run side (load a program, run it, register backends to run it) imports
no torch, so it works on a device with numpy and the backends' runtimes only; the
compile side (`export`, `export_methods`, `prepare_qat`, quantization) needs torch and
is imported the first time one of its names is used.
"""

import importlib
from typing import Any

from .arrays import as_numpy
from .mapped_file import as_bytes
from .backend import (
    Artifact,
    Availability,
    Backend,
    Executable,
    NoOptions,
    PartitionRules,
    Support,
    SupportContext,
    option,
)
from .errors import (
    BackendError,
    DeclineNodes,
    EdgeportError,
    ExecutionError,
    InputError,
    LoweringError,
    PluginError,
    ProgramError,
    UnknownBackendError,
)
from .hookspecs import hookimpl
from .native_output import filter_native_output
from .plugins import Registry, default_registry
from .program import Program, load

__version__ = "0.1.0"

# The compile side: name -> the module that defines it, imported on first use (it imports torch).
_COMPILE_SIDE = {
    "export": ".api",
    "export_methods": ".api",
    "prepare_qat": ".api",
    "CalibrationError": ".quantize",
    "QuantizationError": ".quantize",
    "Scheme": ".quantize",
}


def __getattr__(name: str) -> Any:
    """The compile side's names, imported when first asked for; without torch, an
    ImportError that says what to install."""
    module = _COMPILE_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeport' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module, __name__), name)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise ImportError(f"edgeport.{name} is part of edgeport's compile side, which needs PyTorch; it is not "
                          "installed here (this environment can load and run programs only). Export on a machine "
                          "with torch: pip install torch==2.13.0 'edgeport[cpu]'", name="torch") from None
    globals()[name] = value
    return value


__all__ = [
    "Artifact",
    "Availability",
    "Backend",
    "BackendError",
    "CalibrationError",
    "DeclineNodes",
    "EdgeportError",
    "ExecutionError",
    "Executable",
    "InputError",
    "LoweringError",
    "NoOptions",
    "PartitionRules",
    "PluginError",
    "Program",
    "ProgramError",
    "QuantizationError",
    "Registry",
    "Scheme",
    "Support",
    "SupportContext",
    "UnknownBackendError",
    "as_bytes",
    "as_numpy",
    "default_registry",
    "export",
    "export_methods",
    "filter_native_output",
    "hookimpl",
    "load",
    "option",
    "prepare_qat",
]

