"""edgeport: export a PyTorch model once, run its pieces on the edge backends that fit.

Plugins import only the names listed in ``__all__``.
"""

from .api import export, export_methods, prepare_qat
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
from .quantize import CalibrationError, QuantizationError, Scheme

__version__ = "0.1.0"

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
    "default_registry",
    "export",
    "export_methods",
    "filter_native_output",
    "hookimpl",
    "load",
    "option",
    "prepare_qat",
]

