"""The other end of `edgeport.testing.without_torch`: a process with torch hidden that
loads and runs saved programs as a device does, one request per line on stdin.

Run as a file (``runpy.run_path``), never imported as ``edgeport.testing.…``: that
package imports torch. torch is hidden before anything else is imported, the way
tests/test_run_side.py hides it, so an ``import torch`` anywhere fails as it would on a
board without it.

A request is a JSON line: ``sys_path`` (the kit's, so the backend's module is found as
it is there), ``backend`` (``name``, ``cls`` as "module:qualname", ``pickled``: the
instance in base64, or None), ``program``, ``inputs`` and ``outputs`` (paths: the saved
program, and .npz files of its positional inputs and, written here, its flat outputs).
Before each stage it starts, the process says so in a JSON line, ``{"stage": "load()"}``
(so a kit that stops waiting for a hung one can name it); then the answer, a JSON line:
``{"outputs": N}``, or ``{"failed": "one line"}``.

The backend is the installed plugin's, found through its entry point as a device finds
it, when that plugin registers a backend of the name and class under test; else the
unpickled instance (a backend registered in code, in a test).
"""

import sys

sys.modules["torch"] = None  # before any import: `import torch` now fails, as without torch

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

HINT = ("the run side (your module's import, load() and run()) must need only numpy and your runtime: import torch "
        "inside the compile side's methods (docs/writing-a-backend.md, 'The run side: running without torch')")


def _torch_import(exc: BaseException) -> BaseException | None:
    """The ``import torch`` (or of a module that imports it) behind ``exc``, if that is
    what failed: the ModuleNotFoundError for torch in its chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] == "torch":
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _where(exc: BaseException) -> str:
    """The line that imported torch: the innermost frame outside importlib, its file
    relative to the sys.path entry it was found under ("my_npu.py:31 in load: import torch")."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if not frames:
        return "import torch"
    frame = frames[-1]
    roots = [p for p in sys.path if p and frame.filename.startswith(os.path.join(os.path.abspath(p), ""))]
    name = os.path.relpath(frame.filename, max(roots, key=len)) if roots else frame.filename
    return f"{name}:{frame.lineno} in {frame.name}: {frame.line}"


def _failure(stage: str, exc: BaseException) -> str:
    """One line: what needed torch and where, or what else failed."""
    torch_import = _torch_import(exc)
    if torch_import is not None:
        return f"without torch (as on a device), {stage} needs torch: {_where(torch_import)}; {HINT}"
    return f"without torch (as on a device), {stage} failed: {type(exc).__name__}: {' '.join(str(exc).split())}"


_registries: dict = {}  # (name, class, pickled) -> the registry holding that backend, made once


def _registry(spec: dict):  # -> edgeport.Registry
    """The registry holding the backend under test, as described in the module docstring."""
    key = (spec["name"], spec["cls"], spec["pickled"])
    if key not in _registries:
        import edgeport
        from edgeport.plugins import registry_for

        installed = edgeport.default_registry().entries().get(spec["name"])
        backend = installed.backend if installed is not None else None
        if backend is None or f"{type(backend).__module__}:{type(backend).__qualname__}" != spec["cls"]:
            if spec["pickled"] is None:
                raise LookupError(f"{spec['name']} is not an installed plugin here, and {spec['unpicklable']}")
            backend = pickle.loads(base64.b64decode(spec["pickled"]))  # the kit's own object, pickled by the kit
        _registries[key] = registry_for(backend)
    return _registries[key]


def _flat(value) -> list:
    """A program's outputs as a flat list of arrays, in the order torch's pytree lists them."""
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _flat(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _flat(item)]
    return [np.asarray(value)]


def answer(request: dict, tell) -> dict:
    """Run one request (the module docstring), telling each stage as it starts with
    ``tell(line)``; never raises."""
    sys.path[:] = request["sys_path"]
    stage = "importing the backend's module"
    try:
        tell({"stage": stage})
        registry = _registry(request["backend"])
        stage = "load()"
        tell({"stage": stage})
        import edgeport

        program = edgeport.load(request["program"], registry=registry)
        program.runtime()
        with np.load(request["inputs"]) as stored:
            inputs = [stored[f"arr_{i}"] for i in range(len(stored.files))]
        stage = "run()"
        tell({"stage": stage})
        outputs = _flat(program(*inputs))
    except BaseException as exc:  # noqa: BLE001 - a plugin's SystemExit too: the answer names it
        return {"failed": _failure(stage, exc)}
    np.savez(request["outputs"], *outputs)
    return {"outputs": len(outputs)}


def main() -> None:
    answers = os.fdopen(os.dup(1), "w")  # the answers' own channel: a plugin printing (or its
    os.dup2(2, 1)  # native code writing to fd 1) goes to stderr, not into an answer
    sys.stdout = sys.stderr

    def tell(line: dict) -> None:
        print(json.dumps(line), file=answers, flush=True)

    for line in sys.stdin:
        tell(answer(json.loads(line), tell))


if __name__ == "__main__":
    main()
