"""The built-in `mediatek` backend: MediaTek APUs through NeuroPilot, via LiteRT's MediaTek plugin."""

import edgeport

from .backend import MediatekBackend
from .options import MediatekOptions

__all__ = ["MediatekBackend", "MediatekOptions"]


@edgeport.hookimpl
def edgeport_register_backends(register):  # noqa: ANN001 - pluggy hook
    register(MediatekBackend())
