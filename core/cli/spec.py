"""Resolving a model SPEC (``path/to/file.py:factory`` or ``package.module:factory``)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import torch

from ..errors import EdgeportError


def load_factory(spec: str) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    """Call the factory named by ``spec``; it must return ``(module, example_inputs)``."""
    location, sep, attr = spec.rpartition(":")
    if not sep or not location or not attr:
        raise EdgeportError(
            f"bad model spec {spec!r}", hint="use path/to/file.py:factory or package.module:factory"
        )
    module = _import(location)
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise EdgeportError(f"{location} has no factory {attr!r}", hint=f"callables there: {', '.join(names)}")
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise EdgeportError(
            f"factory {spec} must return (module, example_inputs), got {type(result).__name__}",
        )
    model, inputs = result
    return model, inputs if isinstance(inputs, tuple) else (inputs,)


def _import(location: str) -> Any:
    if location.endswith(".py") or os.sep in location:
        if not os.path.isfile(location):
            raise EdgeportError(f"no such file: {location}")
        name = "_edgeport_model_" + os.path.splitext(os.path.basename(location))[0]
        spec = importlib.util.spec_from_file_location(name, location)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(location)
    except ImportError as exc:
        raise EdgeportError(f"cannot import {location}: {exc}") from None


def load_object(spec: str) -> Any:
    """The object named by ``spec`` (``path/to/file.py:name`` or ``package.module:name``)."""
    location, sep, attr = spec.rpartition(":")
    if not sep or not location or not attr:
        raise EdgeportError(f"bad spec {spec!r}", hint="use path/to/file.py:name or package.module:name")
    module = _import(location)
    if not hasattr(module, attr):
        raise EdgeportError(f"{location} has no {attr!r}")
    return getattr(module, attr)
