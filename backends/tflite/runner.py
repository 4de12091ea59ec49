"""Run a TFLite model with LiteRT (or tflite-runtime), XNNPACK delegate applied by default.

The interpreter is built once per model; a call sets each input once (from a numpy
view of the contiguous torch tensor, no extra copy), invokes, and reads each output
once. Outputs are copies: the next invoke overwrites the interpreter's buffers.
What a call costs besides invoke (~28 µs warm) grows to ~0.2 ms on a loaded machine,
whose other processes empty the caches during invoke; fewer torch calls here did not
measurably shrink it (bench/README.md, `call_path.py`). A program that is this one step
calls it directly with numpy arrays (`takes_numpy`, the runtime's direct call), which
took 0.3-1.5% off MobileNetV2 int8's call (bench/README.md, `quantize.py --walk`); a
static-shape model skips the resize check.

An interpreter runs one call at a time (two overlapping calls raise LiteRT's "at least
1 reference to internal data" or read each other's outputs), so the executable does not
claim ``thread_safe`` and edgeport's runtime gives it a lock. A lock, rather than an
interpreter per thread or a pool, because one call already uses every core by default
and each extra interpreter holds its own packed copy of the weights (bench/threads.py).

An input can also live in the interpreter's own buffer (`input_buffer`, the
`edgeport.state_rows.InPlaceInputs` protocol): passing that buffer back as the input
copies nothing, which is how a KV cache stays inside the delegate between tokens.
"""

from __future__ import annotations

import ctypes
import os
import re
from importlib import metadata
from typing import Any, Sequence

import numpy as np

from edgeport.arrays import as_numpy, is_torch_tensor

_RUNTIMES = (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"))
# LiteRT's INFO lines ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", printed
# by the first interpreter to allocate) are chatter; its WARNING and ERROR lines are kept.
_CHATTER = (re.compile(r"^INFO: "),)


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


def undelegated_ops(interpreter: Any) -> list[str]:
    """The operators a loaded interpreter runs with TFLite's own kernels, not in a
    delegate (XNNPACK), as "INDEX:NAME".

    The interpreter lists the model's operators and then one DELEGATE node per delegated
    subgraph, with that subgraph's inputs and outputs: an operator is delegated when it
    lies on a path from a DELEGATE node's outputs back to its inputs. Reads LiteRT's
    `_get_ops_details` (its Python API has no public op listing); [] when unavailable.
    """
    details = getattr(interpreter, "_get_ops_details", None)
    if details is None:
        return []
    ops = details()
    plain = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {int(t): o for o in plain for t in o["outputs"]}
    covered: set[int] = set()
    for delegate in (o for o in ops if o["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in delegate["inputs"]}
        stack = [int(t) for t in delegate["outputs"]]
        while stack:
            op = producer.get(stack.pop())
            if op is None or op["index"] in covered:
                continue
            covered.add(op["index"])
            stack.extend(int(t) for t in op["inputs"] if t >= 0 and int(t) not in boundary)
    return [f"{o['index']}:{o['op_name']}" for o in plain if o["index"] not in covered]


def new_interpreter(model_bytes: bytes, threads: int = 0, *, needs_delegate: bool = False) -> Any:
    """A LiteRT interpreter over ``model_bytes`` (XNNPACK applied), tensors allocated.

    A model with blockwise INT4 weights (``needs_delegate``) must run in XNNPACK:
    TFLite's own FULLY_CONNECTED kernel does not read their block scales and computes
    garbage, so loading refuses when a FULLY_CONNECTED is left outside the delegate.
    Other operators XNNPACK leaves (an LLM's embedding GATHER) run fine in TFLite's kernels.
    """
    from edgeport import filter_native_output

    with filter_native_output(drop=_CHATTER):
        interpreter = _interpreter_class()(model_content=model_bytes, num_threads=threads or default_threads())
        interpreter.allocate_tensors()
    left = [op for op in undelegated_ops(interpreter) if op.endswith(":FULLY_CONNECTED")] if needs_delegate else []
    if left:
        from edgeport import BackendError

        raise BackendError(
            f"LiteRT's XNNPACK delegate left {', '.join(left)} to TFLite's kernels, which cannot run "
            "blockwise INT4 weights",
            hint="re-export with --quantize int8-dynamic, or run with a LiteRT whose XNNPACK takes these ops",
        )
    return interpreter


class TfliteExecutable:
    """A loaded TFLite model: `run(inputs)` -> outputs as numpy arrays, in model order.
    Inputs may be numpy arrays or torch tensors (``takes_numpy``)."""

    takes_numpy = True

    def __init__(self, model_bytes: bytes, threads: int = 0, interpreter: Any = None, *,
                 needs_delegate: bool = False) -> None:
        if interpreter is None:
            interpreter = new_interpreter(model_bytes, threads, needs_delegate=needs_delegate)
        self._inputs = [d["index"] for d in interpreter.get_input_details()]
        self._outputs = [d["index"] for d in interpreter.get_output_details()]
        self._set = interpreter.set_tensor
        self._get = interpreter.get_tensor
        self._invoke = interpreter.invoke
        self._in_place: dict[int, tuple[int, int]] = {}  # input position -> (address, bytes) of its own buffer
        self._shapes = [tuple(d["shape"]) for d in interpreter.get_input_details()]  # as allocated
        # Inputs of static shape cannot resize: the call skips comparing shapes (LiteRT's
        # set_tensor still refuses a wrong one).
        self._dynamic = any(-1 in d["shape_signature"] for d in interpreter.get_input_details())
        self.interpreter = interpreter

    def input_buffer(self, position: int, rows_of: tuple[int, ...] | None = None) -> np.ndarray | None:
        """Input ``position``'s storage inside the interpreter, as a writable array; None
        for a state prefix (``rows_of``: the interpreter's arena places an input of a
        dynamic dim anew at each size).

        Tensors are allocated in the constructor at the shapes the model was written
        with, which for a dynamic dim is its largest size; a resize (another size of a
        dynamic dim, in other inputs) re-plans LiteRT's arena and `_resize` checks that
        this address stayed where it was. The array keeps this executable (and its
        interpreter) alive. It is built from the address alone because LiteRT refuses
        to invoke while a view it handed out (``Interpreter.tensor``) is alive.
        """
        if rows_of is not None:
            return None
        address, nbytes, dtype, shape = self._storage(position)
        raw = (ctypes.c_byte * nbytes).from_address(address)
        raw.owner = self
        self._in_place[position] = (address, nbytes)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _storage(self, position: int) -> tuple[int, int, np.dtype, tuple[int, ...]]:
        """(address, bytes, dtype, shape) of input ``position`` inside the interpreter."""
        view = self.interpreter.tensor(self._inputs[position])()
        found = view.ctypes.data, view.nbytes, view.dtype, view.shape
        del view
        return found

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        if len(inputs) != len(self._inputs):
            from edgeport import InputError

            raise InputError(f"the TFLite model takes {len(self._inputs)} inputs, got {len(inputs)}")
        if self._dynamic:
            self._resize([tuple(x.shape) for x in inputs])
        in_place = self._in_place
        for position, (index, x) in enumerate(zip(self._inputs, inputs)):
            if in_place and position in in_place and _address(x) == in_place[position]:
                continue  # already in place: the input is the interpreter's own buffer
            self._set(index, as_numpy(x))
        try:
            self._invoke()
        except RuntimeError as e:
            raise could_not_run(e) from None
        return [np.asarray(self._get(index)) for index in self._outputs]  # rank-0 comes back as a scalar

    def _resize(self, shapes: list[tuple[int, ...]]) -> None:
        """Resize inputs whose shape changed since the last call (a model with dynamic
        dims), then reallocate once; a call at the same shapes costs nothing here.
        LiteRT checks the new shapes against the model's shape_signature."""
        changed = [(i, shape) for i, (shape, old) in enumerate(zip(shapes, self._shapes)) if shape != old]
        if not changed:
            return
        moved = next(((i, shape) for i, shape in changed if i in self._in_place), None)
        if moved is not None:  # its buffer, handed out by input_buffer, is the state itself
            from edgeport import InputError

            raise InputError(f"input {moved[0]}, which lives in place, changed shape to {moved[1]}",
                             hint="pass inputs of the shapes the program was exported with")
        for position, shape in changed:
            self.interpreter.resize_tensor_input(self._inputs[position], list(shape), strict=True)
            self._shapes[position] = shape
        self.interpreter.allocate_tensors()
        self._check_in_place()

    def _check_in_place(self) -> None:
        """The buffers handed out by `input_buffer` are where they were. LiteRT places
        inputs first in its arena, in tensor order, and the arena, first sized for the
        model's largest shapes, does not grow: a state input written before the inputs
        that change size keeps its address (the writer writes state first)."""
        for position, (address, _) in self._in_place.items():
            if self._storage(position)[0] != address:
                from edgeport import ExecutionError

                raise ExecutionError(f"LiteRT moved input {position}, which lives in place, when the model's "
                                     "inputs were resized; its contents are lost",
                                     hint="reload the program and keep its inputs at one shape")


def _address(x: Any) -> tuple[int, int]:
    """(address, bytes) of a tensor's or array's memory, without converting it."""
    if is_torch_tensor(x):
        return x.data_ptr(), x.nbytes
    return x.ctypes.data, x.nbytes


class TfliteEntries:
    """A merged model (`merge.merge_models`): ``entry(i)`` runs subgraph i. One interpreter
    holds them all, so their shared weights are in memory once. Entry 0 is the primary
    subgraph, run like any single model (in-place inputs included); the others run
    through LiteRT's signature runners, which copy their inputs.

    Every subgraph is prepared at load, as the primary one is: a model whose second
    subgraph LiteRT cannot prepare (an edited shape) is refused then, not at that
    method's first call."""

    def __init__(self, model_bytes: bytes, keys: Sequence[str], io_names: Sequence[tuple[list[str], list[str]]],
                 threads: int = 0, *, needs_delegate: bool = False) -> None:
        interpreter = new_interpreter(model_bytes, threads, needs_delegate=needs_delegate)
        _check_signatures(interpreter, keys, io_names)
        self._entries: list[Any] = [TfliteExecutable(model_bytes, interpreter=interpreter)]
        for key, (inputs, outputs) in list(zip(keys, io_names))[1:]:
            self._entries.append(_SignatureExecutable(interpreter, key, inputs, outputs))
            _prepare(interpreter, key)
        self.interpreter = interpreter

    def entry(self, index: int) -> Any:
        return self._entries[index]


def _check_signatures(interpreter: Any, keys: Sequence[str], io_names: Sequence[tuple[list[str], list[str]]]) -> None:
    """The names the artifact's metadata gives each entry are its model's signature's:
    a mismatch would otherwise surface as a KeyError in the middle of a call."""
    from edgeport import ProgramError

    signatures = interpreter.get_signature_list()
    for key, (inputs, outputs) in zip(keys, io_names):
        found = signatures.get(key)
        if found is None or sorted(found["inputs"]) != sorted(inputs) or sorted(found["outputs"]) != sorted(outputs):
            raise ProgramError(f"the merged TFLite model's entry {key!r} does not have the inputs and outputs "
                               "its artifact metadata names", hint="re-export the model")


def _prepare(interpreter: Any, key: str) -> None:
    """Plan the memory of signature ``key``'s subgraph, as its first call would.

    LiteRT's Python API allocates a non-primary subgraph only inside a signature
    runner's call, so this reaches for the wrapper's per-subgraph ``AllocateTensors``
    (private, like `undelegated_ops`' listing); a runtime without it prepares at the
    first call instead. The arena it plans is the one that call would plan.
    """
    wrapper = getattr(interpreter, "_interpreter", None)
    allocate = getattr(wrapper, "AllocateTensors", None)
    index = getattr(wrapper, "GetSubgraphIndexFromSignature", None)
    if allocate is not None and index is not None:
        allocate(index(key))


class _SignatureExecutable:
    """One non-primary subgraph of a merged model, run by its signature.

    The runner is made per call and dropped after it: a live runner holds the
    interpreter's internals, and LiteRT then refuses ``invoke`` of the primary subgraph.
    """

    def __init__(self, interpreter: Any, key: str, inputs: list[str], outputs: list[str]) -> None:
        self._interpreter, self._key, self._inputs, self._outputs = interpreter, key, inputs, outputs

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        runner = self._interpreter.get_signature_runner(self._key)
        try:
            results = runner(**{name: as_numpy(x) for name, x in zip(self._inputs, inputs)})
        except RuntimeError as e:
            raise could_not_run(e) from None
        return [np.asarray(results[name]) for name in self._outputs]


def could_not_run(error: RuntimeError) -> Exception:
    """LiteRT's failure inside a kernel as one ExecutionError line. A kernel refuses
    what it cannot compute (a GATHER's index past its table: a token id the model does
    not have) with a RuntimeError whose lines run together ("...out of boundsNode number
    1 (GATHER) failed to invoke.")."""
    from edgeport import ExecutionError

    text = " ".join(str(error).replace("Node number", ". Node number").split()).replace(" . ", ". ")
    return ExecutionError(f"LiteRT could not run the model: {text}",
                          hint="check the inputs' values (an index or token id past what the model has?)")
