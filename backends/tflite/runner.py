"""Run a TFLite model with LiteRT (or tflite-runtime), XNNPACK delegate applied by default.

The interpreter is built once per model; a call sets each input once (from a numpy
view of the contiguous torch tensor, no extra copy), invokes, and reads each output
once. Outputs are copies: the next invoke overwrites the interpreter's buffers.

An input can also live in the interpreter's own buffer (`input_buffer`, the
`edgeport.state_rows.InPlaceInputs` protocol): passing that buffer back as the input
copies nothing, which is how a KV cache stays inside the delegate between tokens.
"""

from __future__ import annotations

import ctypes
import os
from importlib import metadata
from typing import Any, Sequence

import numpy as np
import torch

_RUNTIMES = (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"))


def _interpreter_class() -> type:
    errors = []
    for module, _ in _RUNTIMES:
        try:
            mod = __import__(module, fromlist=["Interpreter"])
        except ImportError as e:
            errors.append(f"{module}: {e}")
            continue
        return mod.Interpreter
    from edgeport import BackendError

    raise BackendError(
        "no TFLite interpreter is installed (" + "; ".join(errors) + ")",
        hint="install LiteRT: pip install ai-edge-litert",
    )


def interpreter_missing() -> str:
    """Why no TFLite interpreter can run here, or "" when one imports."""
    try:
        _interpreter_class()
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot run"
        return str(e)
    return ""


def runtime_version() -> str:
    """The installed runtime as "ai-edge-litert 2.3.0" (no import of the runtime itself)."""
    for _, dist in _RUNTIMES:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "none"


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def new_interpreter(model_bytes: bytes, threads: int = 0) -> Any:
    """A LiteRT interpreter over ``model_bytes`` (XNNPACK applied), tensors allocated."""
    interpreter = _interpreter_class()(model_content=model_bytes, num_threads=threads or default_threads())
    interpreter.allocate_tensors()
    return interpreter


class TfliteExecutable:
    """A loaded TFLite model: `run(inputs)` -> outputs as numpy arrays, in model order."""

    def __init__(self, model_bytes: bytes, threads: int = 0, interpreter: Any = None) -> None:
        if interpreter is None:
            interpreter = new_interpreter(model_bytes, threads)
        self._inputs = [d["index"] for d in interpreter.get_input_details()]
        self._outputs = [d["index"] for d in interpreter.get_output_details()]
        self._set = interpreter.set_tensor
        self._get = interpreter.get_tensor
        self._invoke = interpreter.invoke
        self._in_place: dict[int, tuple[int, int]] = {}  # input position -> (address, bytes) of its own buffer
        self.interpreter = interpreter

    def input_buffer(self, position: int) -> np.ndarray:
        """Input ``position``'s storage inside the interpreter, as a writable array.

        Tensors are allocated once, in the constructor, and never resized, so the
        address stays valid; the array keeps this executable (and its interpreter)
        alive. It is built from the address alone because LiteRT refuses to invoke
        while a view it handed out (``Interpreter.tensor``) is alive.
        """
        view = self.interpreter.tensor(self._inputs[position])()
        address, nbytes, dtype, shape = view.ctypes.data, view.nbytes, view.dtype, view.shape
        del view
        raw = (ctypes.c_byte * nbytes).from_address(address)
        raw.owner = self
        self._in_place[position] = (address, nbytes)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        if len(inputs) != len(self._inputs):
            from edgeport import InputError

            raise InputError(f"the TFLite model takes {len(self._inputs)} inputs, got {len(inputs)}")
        in_place = self._in_place
        for position, (index, x) in enumerate(zip(self._inputs, inputs)):
            if in_place and position in in_place and _address(x) == in_place[position]:
                continue  # already in place: the input is the interpreter's own buffer
            self._set(index, _array(x))
        self._invoke()
        return [np.asarray(self._get(index)) for index in self._outputs]  # rank-0 comes back as a scalar


def _address(x: Any) -> tuple[int, int]:
    """(address, bytes) of a tensor's or array's memory, without converting it."""
    if isinstance(x, torch.Tensor):
        return x.data_ptr(), x.nbytes
    return x.ctypes.data, x.nbytes


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if not x.is_contiguous():
            x = x.contiguous()
        return x.numpy()
    return np.ascontiguousarray(x)


class TfliteEntries:
    """A merged model (`merge.merge_models`): ``entry(i)`` runs subgraph i. One interpreter
    holds them all, so their shared weights are in memory once. Entry 0 is the primary
    subgraph, run like any single model (in-place inputs included); the others run
    through LiteRT's signature runners, which copy their inputs."""

    def __init__(self, model_bytes: bytes, keys: Sequence[str], io_names: Sequence[tuple[list[str], list[str]]],
                 threads: int = 0) -> None:
        interpreter = new_interpreter(model_bytes, threads)
        self._entries: list[Any] = [TfliteExecutable(model_bytes, interpreter=interpreter)]
        for key, (inputs, outputs) in list(zip(keys, io_names))[1:]:
            self._entries.append(_SignatureExecutable(interpreter, key, inputs, outputs))
        self.interpreter = interpreter

    def entry(self, index: int) -> Any:
        return self._entries[index]


class _SignatureExecutable:
    """One non-primary subgraph of a merged model, run by its signature.

    The runner is made per call and dropped after it: a live runner holds the
    interpreter's internals, and LiteRT then refuses ``invoke`` of the primary subgraph.
    """

    def __init__(self, interpreter: Any, key: str, inputs: list[str], outputs: list[str]) -> None:
        self._interpreter, self._key, self._inputs, self._outputs = interpreter, key, inputs, outputs

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        runner = self._interpreter.get_signature_runner(self._key)
        results = runner(**{name: _array(x) for name, x in zip(self._inputs, inputs)})
        return [np.asarray(results[name]) for name in self._outputs]
