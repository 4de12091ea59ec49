"""Names a package imports only when first used: its compile side, which imports torch.

A device installs edgeport without torch (the run side only), so a package's
``__init__`` must not import torch; the names that need it are listed instead and
imported on first use (PEP 562's module ``__getattr__``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def imported_on_first_use(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each name in ``modules`` comes from the
    module it maps to (relative to ``package``) when first asked for, and is kept. Without
    torch, asking gives an ImportError that says what to install, not torch's own."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(module, package), name)
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            raise ImportError(f"{package}.{name} is part of edgeport's compile side, which needs PyTorch; it is "
                              "not installed here (this environment can load and run programs only). Export on a "
                              "machine with torch: pip install torch==2.13.0 'edgeport[cpu]'", name="torch") from None
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
