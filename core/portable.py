"""Portable steps: partitions no backend takes, run as plain torch.

They are stored as torch.export's JSON graph plus our raw tensors, not as a
``torch.export.save`` archive: torch's loader may fall back to full unpickling for
some weights, and a program file must never unpickle anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch._export.serde import serialize as serde
from torch.export import ExportedProgram

from . import sized_constants  # noqa: F401 - registers torch.ops.edgeport.narrow_to, which portable steps may run
from .errors import a_type
from .mapped_file import Buffer, release
from .native_output import loggers_at, toolchain_log_wanted
from .shared_tensors import is_shared_tensor_path
from .tensors import tensor_from_bytes, tensor_to_bytes


def program_to_files(program: ExportedProgram) -> dict[str, bytes]:
    """The files (relative names -> bytes) that store ``program``."""
    with warnings.catch_warnings():  # torch's serializer warns about its own pytree internals
        warnings.simplefilter("ignore", FutureWarning)
        artifact = serde.serialize(
            program, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False
        )
    files = {"graph.json": artifact.exported_program}
    index: dict[str, Any] = {"state_dict": {}, "constants": {}}
    for section, tensors in (("state_dict", program.state_dict), ("constants", program.constants)):
        for i, (fqn, value) in enumerate(tensors.items()):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"constant {fqn} is {a_type(value)}; only tensors can be stored")
            data, description = tensor_to_bytes(value)
            name = f"{section}/{i}.bin"
            files[name] = data
            index[section][fqn] = {"file": name, **description, "parameter": isinstance(value, torch.nn.Parameter)}
    files["tensors.json"] = json.dumps(index, sort_keys=True).encode()
    return files


# torch's deserializer keeps the graph it is reading in a process-wide variable
# (serialize._CURRENT_DESERIALIZER) and fails if two threads read at once.
_DESERIALIZING = threading.Lock()


SharedTensors = Callable[[str, Mapping[str, Any]], torch.Tensor]  # (path, tensors.json entry) -> the tensor


def program_from_files(read: Callable[[str], Buffer], shared: SharedTensors | None = None) -> ExportedProgram:
    """Rebuild a program from ``read(name) -> bytes`` (or a read-only view of them, as a
    loaded program's files are), its shared tensors (shared_tensors.py) from ``shared``;
    raises on any inconsistency."""
    index = json.loads(bytes(read("tensors.json")))
    sections: dict[str, dict[str, torch.Tensor]] = {"state_dict": {}, "constants": {}}
    for section in sections:
        for fqn, entry in index.get(section, {}).items():
            tensor = _own_tensor(read(entry["file"]), entry) if "shared" not in entry else _shared(shared, fqn, entry)
            sections[section][fqn] = torch.nn.Parameter(tensor, requires_grad=False) if entry.get("parameter") else tensor
    graph = bytes(read("graph.json"))
    _register_quantized_ops(graph)
    artifact = serde.SerializedArtifact(graph, sections["state_dict"], sections["constants"], ((), {}))
    with _DESERIALIZING, warnings.catch_warnings():  # torch warns about its own pytree internals
        warnings.simplefilter("ignore", FutureWarning)
        try:
            program = serde.deserialize(artifact)
        except serde.SerializeError as exc:
            raise ValueError(_cause(exc)) from None
    _check_stored_tensors(program)
    return program


def _cause(exc: Exception) -> str:
    """The first sentence of what torch's deserializer found. Its message for a node
    holds the whole node with its metadata and the original traceback, whose last line
    names the cause ("We failed to resolve torch.ops.aten.x.default to an operator. ...")."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if "Original exception" in str(exc):
        last = last.split(": ", 1)[-1]  # after "torch._export.serde.serialize.SerializeError: "
    return last.split(". ")[0][:300]


def _check_stored_tensors(program: ExportedProgram) -> None:
    """Each weight read from the file has the dtype and shape its graph declares: torch
    rebuilds a program without comparing them, and the first call would fail inside an
    op (or, with a shape that still broadcasts, compute something else)."""
    values = {**program.state_dict, **program.constants}
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    for spec in program.graph_signature.input_specs:
        declared = placeholders[spec.arg.name].meta.get("val") if spec.target is not None else None
        if declared is None:
            continue
        stored = values[spec.target]
        if stored.dtype != declared.dtype or tuple(stored.shape) != tuple(declared.shape):
            raise ValueError(f"tensor {spec.target} is stored as {stored.dtype} {list(stored.shape)}, "
                             f"but the graph reads it as {declared.dtype} {list(declared.shape)}")


def stored_program(files: Mapping[str, Buffer], prefix: str,
                   loaded: dict[tuple[Any, ...], torch.Tensor] | None = None) -> ExportedProgram:
    """The torch program a program's ``files`` store under ``prefix`` (a portable step's
    ``program`` or a delegate's ``reference``). A shared tensor already in ``loaded``
    (filled as tensors are read) is not read again: torch programs that share a weight
    in the file share it in memory (no graph writes a weight: what a method mutates is
    program state)."""
    loaded = {} if loaded is None else loaded

    def shared(path: str, entry: Mapping[str, Any]) -> torch.Tensor:
        key = (path, entry["dtype"], tuple(entry["shape"]))
        if key not in loaded:
            loaded[key] = _own_tensor(files[path], entry)
        return loaded[key]

    return program_from_files(lambda name: files[f"{prefix}/{name}"], shared)


def stored_tensors(files: Mapping[str, Buffer], prefix: str) -> dict[str, str]:
    """The files holding the tensors the torch program under ``prefix`` stores (its own,
    or shared with other torch programs), each with its tensor's dtype; nothing is read
    but the index."""
    index = json.loads(bytes(files[f"{prefix}/tensors.json"]))
    return {entry["shared"] if "shared" in entry else f"{prefix}/{entry['file']}": entry["dtype"]
            for section in index.values() for entry in section.values()}


def _own_tensor(data: Buffer, entry: Mapping[str, Any]) -> torch.Tensor:
    tensor = tensor_from_bytes(data, entry)  # a copy torch owns: the graph may not write a mapped file
    release(data)
    return tensor


def _shared(shared: SharedTensors | None, fqn: str, entry: Mapping[str, Any]) -> torch.Tensor:
    path = entry["shared"]
    if not is_shared_tensor_path(path):
        raise ValueError(f"tensor {fqn} names {path!r}, which is not a shared tensor's file")
    if shared is None:
        raise ValueError(f"tensor {fqn} is shared with other torch programs ({path}): read it with its program's files")
    return shared(path, entry)


# Loggers torchao's import writes to stderr through: its optional CUDA kernels that do
# not load on a CPU machine ("Failed to load .../_C_mxfp8.so"), and torch's pytree
# deprecation of its enum registrations. Nothing a user can act on.
_TORCHAO_IMPORT_NOISE = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Import torchao in the block without its import-time log lines, as toolchain
    output is hidden unless asked for (`toolchain_log_wanted`, --debug)."""
    loggers = [] if toolchain_log_wanted() else [logging.getLogger(name) for name in _TORCHAO_IMPORT_NOISE]
    with loggers_at(logging.ERROR, loggers):
        yield


def _register_quantized_ops(graph: bytes) -> None:
    """Register the quantize/dequantize op libraries a quantized step calls (torch's
    quantized_decomposed, torchao's affine ops), only when the step calls them."""
    if b"quantized_decomposed." in graph:
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    if b"torchao." in graph:
        with quiet_torchao_import():
            import torchao.quantization.quant_primitives  # noqa: F401


class PortableExecutable:
    """Runs a program's graph directly, skipping the pytree checks of ``.module()``:
    inputs arrive flat and already validated, so this keeps per-call overhead low.
    Calls from several threads may overlap: the graph is functional (program state comes
    in as inputs and goes out as outputs) and torch's grad mode is per thread."""

    thread_safe = True

    def __init__(self, program: ExportedProgram) -> None:
        signature = program.graph_signature
        values = {**program.state_dict, **program.constants}
        self._constants = [values[spec.target] for spec in signature.input_specs if spec.target is not None]
        self._graph = program.graph_module

    def run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        with torch.no_grad():
            return self._graph(*self._constants, *inputs)
