"""Resolving a model SPEC (``path/to/file.py:factory`` or ``package.module:factory``).

The model file and its factory are the user's code: whatever goes wrong in them (a
syntax error, an exception, a function that is not a factory) is their mistake to
fix, so it is one `EdgeportError` naming the spec, never "internal error".
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import reprlib
import sys
from typing import Any, Callable, Iterator

import torch

from ..errors import EdgeportError

SPEC_HINT = "a factory takes no arguments and returns (module, example_inputs)"


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
        found = "" if factory is None else f" ({attr} = {reprlib.repr(factory)}, not a function)"
        raise EdgeportError(f"{location} has no factory {attr!r}{found}", hint=f"callables there: {', '.join(names)}")
    _check_takes_no_arguments(spec, factory)
    try:
        with _beside(location):
            result = factory()
    except (Exception, SystemExit) as exc:  # a sys.exit() in the user's code ended the command with no word
        raise EdgeportError(f"factory {spec} raised {type(exc).__name__}: {exc}",
                            hint="fix the factory; rerun with --debug for the traceback") from exc
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise EdgeportError(f"factory {spec} must return (module, example_inputs), got {type(result).__name__}",
                            hint=SPEC_HINT)
    model, inputs = result
    if isinstance(inputs, list):  # wrapped as one argument, it failed deep in torch's trace of forward
        raise EdgeportError(f"factory {spec} returns its example inputs as a list; they are a tuple, one entry "
                            "per argument of forward", hint="return (model, (x,)) for forward(x), (model, (x, y)) "
                            "for forward(x, y), (model, ([x, y],)) for a forward taking one list")
    return model, inputs if isinstance(inputs, tuple) else (inputs,)


def _check_takes_no_arguments(spec: str, factory: Callable[..., Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: calling it will tell
        return
    required = [p for p in signature.parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise EdgeportError(f"{spec} is not a factory: it takes arguments {signature}", hint=SPEC_HINT)


def _import(location: str) -> Any:
    if location.endswith(".py") or os.sep in location:
        if not os.path.isfile(location):
            raise EdgeportError(f"no such file: {location}")
        name = "_edgeport_model_" + os.path.splitext(os.path.basename(location))[0]
        spec = importlib.util.spec_from_file_location(name, location)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with _beside(location):
                spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # SyntaxError included: the file is the user's code
            del sys.modules[name]
            raise EdgeportError(f"cannot load {location}: {type(exc).__name__}: {exc}",
                                hint="fix the model file; rerun with --debug for the traceback") from exc
        return module
    try:
        return importlib.import_module(location)
    except ImportError as exc:
        raise EdgeportError(f"cannot import {location}: {exc}", hint=_file_hint(location)) from None
    except (Exception, SystemExit) as exc:
        raise EdgeportError(f"cannot import {location}: {type(exc).__name__}: {exc}",
                            hint="fix the module; rerun with --debug for the traceback") from exc


@contextlib.contextmanager
def _beside(location: str) -> Iterator[None]:
    """The folder of the file `location` first on sys.path for the block, as ``python
    model.py`` has it, so the file and its factory import the modules beside it (``from
    layers import Block``); then sys.path as it was, so a long-lived process (an
    application, a test run) does not collect folders. A module name changes nothing."""
    if not (location.endswith(".py") or os.sep in location):
        yield
        return
    folder = os.path.dirname(os.path.abspath(location))
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)  # the first occurrence: ours


def _file_hint(location: str) -> str:
    """What to write when a module name was meant as a file: ``m`` beside m.py, or a
    file that is not .py (``notes.txt`` reads as module ``notes``, submodule ``txt``)."""
    if os.path.isfile(location + ".py"):
        return f"to load the file {location}.py, name it: {location}.py:NAME (a module name is imported from sys.path)"
    if os.path.isfile(location):
        return f"{location} is a file but not a .py file; a spec names a Python file (path/to/file.py:NAME)"
    return "use path/to/file.py:NAME, or package.module:NAME of an installed package"


def load_object(spec: str) -> Any:
    """The object named by ``spec`` (``path/to/file.py:name`` or ``package.module:name``)."""
    location, sep, attr = spec.rpartition(":")
    if not sep or not location or not attr:
        raise EdgeportError(f"bad spec {spec!r}", hint="use path/to/file.py:name or package.module:name")
    module = _import(location)
    if not hasattr(module, attr):
        raise EdgeportError(f"{location} has no {attr!r}")
    return getattr(module, attr)
