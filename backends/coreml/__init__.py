"""The Core ML backend plugin: coremltools ML programs per partition (runs on macOS only).

Importing this module is cheap: coremltools is imported the first time the backend
needs it.
"""

import edgeport

from .backend import CoreMLBackend
from .options import CoreMLOptions

__all__ = ["CoreMLBackend", "CoreMLOptions"]


@edgeport.hookimpl
def edgeport_register_backends(register):
    register(CoreMLBackend())
