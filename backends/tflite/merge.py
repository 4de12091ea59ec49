"""Several TFLite models as one: a subgraph and a SignatureDef per model, weights stored once.

An LLM program's ``prefill`` and ``decode`` are two partitions over the same weights;
written apart, the program would carry every weight twice. Merged, each model becomes
one subgraph of a single model, and any constant buffer whose bytes another model
already brought (compared whole, found by size and a sample of its bytes) is shared.
Subgraph 0 is the primary one: LiteRT runs it with ``invoke`` (and lets its inputs live
in place, `runner.TfliteExecutable.input_buffer`); the others run through signature
runners.
"""

from __future__ import annotations

from typing import Any, Sequence

import flatbuffers
import numpy as np

from .flatbuffer import write_buffer
from .schema import tfl


def merge_models(models: Sequence[bytes], keys: Sequence[str], io_names: Sequence[tuple[Sequence[str], Sequence[str]]]) -> bytes:
    """One model holding ``models`` (single-subgraph models written by `write_tflite`) as
    subgraphs 0..n-1, with signature ``keys[i]`` naming subgraph i's inputs and outputs
    ``io_names[i]`` (in subgraph order)."""
    t = tfl()
    merged = t.ModelT()
    merged.version, merged.description = 3, "edgeport TFLite writer"
    merged.subgraphs, merged.operatorCodes, merged.signatureDefs, merged.metadata = [], [], [], []
    buffers = _Buffers()
    codes: dict[tuple[Any, ...], int] = {}
    meta_names: set[str] = set()
    for i, data in enumerate(models):
        model = t.ModelT.InitFromPackedBuf(data, 0)
        buffer_at = [buffers.add(b.data) for b in model.buffers]
        code_at = [_code_index(merged, codes, code) for code in model.operatorCodes]
        if len(model.subgraphs) != 1:
            raise ValueError(f"model {i} has {len(model.subgraphs)} subgraphs; merge takes single-subgraph models")
        subgraph = model.subgraphs[0]
        for tensor in subgraph.tensors:
            tensor.buffer = buffer_at[tensor.buffer]
        for op in subgraph.operators:
            op.opcodeIndex = code_at[op.opcodeIndex]
        merged.subgraphs.append(subgraph)
        merged.signatureDefs.append(_signature(t, keys[i], i, subgraph, io_names[i]))
        for entry in model.metadata or []:
            name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
            if name not in meta_names:  # the same hints for every subgraph (one compile's options)
                meta_names.add(name)
                entry.buffer = buffer_at[entry.buffer]
                merged.metadata.append(entry)
    merged.buffers = [_AlignedBuffer(data) for data in buffers.data]
    builder = flatbuffers.Builder(buffers.nbytes + sum(len(m) for m in models) // 8 + 4096)
    builder.Finish(merged.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _Buffers:
    """Constant buffers, each distinct content once (buffer 0 is the empty sentinel)."""

    def __init__(self) -> None:
        self.data: list[np.ndarray | None] = [None]
        self._by_sample: dict[tuple[int, bytes], list[int]] = {}
        self.nbytes = 0

    def add(self, data: np.ndarray | None) -> int:
        if data is None or not len(data):
            return 0
        key = (len(data), bytes(data[:64]) + bytes(data[-64:]))
        for index in self._by_sample.get(key, ()):
            if np.array_equal(self.data[index], data):
                return index
        self.data.append(data)
        self.nbytes += len(data)
        self._by_sample.setdefault(key, []).append(len(self.data) - 1)
        return len(self.data) - 1


class _AlignedBuffer:
    """A buffer packed the way `write_tflite` packs it: data aligned for in-place reads."""

    def __init__(self, data: np.ndarray | None) -> None:
        self.data = data

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the generated object API's name
        return write_buffer(builder, tfl(), self.data)


def _code_index(merged: Any, codes: dict[tuple[Any, ...], int], code: Any) -> int:
    key = (code.builtinCode, code.deprecatedBuiltinCode, code.version, code.customCode)
    if key not in codes:
        codes[key] = len(merged.operatorCodes)
        merged.operatorCodes.append(code)
    return codes[key]


def _signature(t: Any, key: str, index: int, subgraph: Any, names: tuple[Sequence[str], Sequence[str]]) -> Any:
    def tensor_map(name: str, tensor: int) -> Any:
        entry = t.TensorMapT()
        entry.name, entry.tensorIndex = name, int(tensor)
        return entry

    inputs, outputs = names
    signature = t.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = key, index
    signature.inputs = [tensor_map(n, i) for n, i in zip(inputs, subgraph.inputs)]
    signature.outputs = [tensor_map(n, i) for n, i in zip(outputs, subgraph.outputs)]
    return signature
