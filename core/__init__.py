"""edgeport: export a PyTorch model once, run its pieces on the edge backends that fit.

Plugins import only the names listed in ``__all__``.

Two layers: the run side (load a program, run it, register backends to run it) imports
no torch, so it works on a device with numpy and the backends' runtimes only; the
compile side (`export`, `export_methods`, `prepare_qat`, quantization) needs torch and
is imported the first time one of its names is used.
"""

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
from .lazy import imported_on_first_use
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


__getattr__ = imported_on_first_use(__name__, _COMPILE_SIDE)


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

