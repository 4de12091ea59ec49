"""One torch.onnx function registry per test session, instead of one per export.

torch.onnx (torch 2.13) builds its registry of ATen -> ONNX functions afresh on every
``torch.onnx.export``: it parses the source of each of onnxscript's ~500 torchlib
functions, ~0.9 s a call, about half of what a qualcomm compile of a small partition
costs, and the suite runs hundreds of those compiles. The exporter only reads the
registry (``_compat.export_compat`` builds it, adds a ``custom_translation_table`` to it
if one is given, and ``_core.export`` looks functions up in it), so the session builds
it once per opset and hands each export a copy of its own: what one export adds to its
registry never reaches the next. The ONNX written is the same (test_onnx_registry.py).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest


class SharedRegistries:
    """Stands in for ``ONNXRegistry.from_torchlib``: torch's ``build`` runs once per
    argument list; each call gets a copy."""

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build  # torch's own from_torchlib (unbound)
        self.built: dict[tuple, Any] = {}

    def __call__(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in self.built:
            self.built[key] = self.build(cls, *args, **kwargs)
        return copy_of(self.built[key])


def copy_of(registry: Any) -> Any:
    """A registry of the same opset and functions, whose lists are its own."""
    fresh = type(registry)()
    fresh._opset_version = registry.opset_version
    fresh.functions = {target: list(metas) for target, metas in registry.functions.items()}
    return fresh


def share_torchlib_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put `SharedRegistries` in place of ``ONNXRegistry.from_torchlib``."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:  # no onnx/onnxscript here: nothing exports to ONNX
        return
    monkeypatch.setattr(ONNXRegistry, "from_torchlib", classmethod(SharedRegistries(ONNXRegistry.from_torchlib.__func__)))
