"""The built-in `cpu` backend, registered through the same hook as any plugin."""

from typing import Callable

import edgeport

from .backend import CpuBackend, CpuOptions

__all__ = ["CpuBackend", "CpuOptions"]


@edgeport.hookimpl
def edgeport_register_backends(register: Callable[..., None]) -> None:
    register(CpuBackend())
