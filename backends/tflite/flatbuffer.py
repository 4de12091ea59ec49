"""Collect tensors, buffers and operators as plain records, then serialise them once.

Lowering code appends records and may still change them (fold a batch norm into a
conv's weights, fuse an activation into its producer) until `ModelBuilder.finish`
writes the flatbuffer in one pass. Weights are copied once, from their arrays' memory
into the model's bytes (never element by element; `_ModelBytes`), and the builder is
sized up front so it never regrows.

The model is written so that LiteRT's own tools accept it: every tensor name is
unique (a repeated name gets a numeric suffix) and the one subgraph is exported as the
`serving_default` signature, naming each input and output.
"""

from __future__ import annotations

import dataclasses
import mmap
from dataclasses import dataclass, field
from typing import Any, Sequence

import flatbuffers
import numpy as np

from .schema import tfl

ABSENT = -1  # tensor index of an optional input that is left out
_WEIGHT_ALIGN = 16  # align constant data so runtimes may read it in place
# Operator versions the runtime registers that do not start at 1 (BROADCAST_TO's
# version 1 was withdrawn); every other op is written as version 1.
_MIN_VERSIONS = {"BROADCAST_TO": 2}


@dataclass
class Options:
    """A builtin options table by its schema name, e.g. Options("Conv2DOptions", {"StrideW": 2}).

    Field names are the suffixes of the generated `<Table>Add<Field>` functions; a list
    value becomes an int32 vector.
    """

    table: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class OpRecord:
    code: int  # BuiltinOperator value
    inputs: list[int]
    outputs: list[int]
    options: Options | None = None


@dataclass(frozen=True)
class Blockwise:
    """Blockwise quantization of a 2d weight (INT4 in LiteRT): one scale per block of
    `block_size` consecutive elements of each row, held in the FLOAT16 tensor `scales`."""

    scales: int  # tensor index of the (rows, cols / block_size) float16 scales
    block_size: int


@dataclass(frozen=True)
class Quantization:
    """A tensor's QuantizationParameters: real = scale * (q - zero_point).

    One scale and zero point per tensor, or one per slice along `axis` (per channel);
    `blockwise` instead points at a tensor of per-block scales.
    """

    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int = 0
    blockwise: Blockwise | None = None


@dataclass
class TensorRecord:
    shape: tuple[int, ...]
    type: int  # TensorType value
    name: str
    buffer: int = 0  # 0 is the empty sentinel buffer: no constant data
    quantization: Quantization | None = None
    signature: tuple[int, ...] | None = None  # shape_signature: -1 for a dim resized at run time


class ModelBuilder:
    """One subgraph under construction."""

    def __init__(self) -> None:
        self.tensors: list[TensorRecord] = []
        self.buffers: list[np.ndarray | None] = [None]  # buffer 0: the empty sentinel
        # (address, bytes, dtype) of each buffer's memory: a constant given twice (a tied
        # embedding read by GATHER and by FULLY_CONNECTED) is stored once. Addresses stay
        # unique because `buffers` keeps every array alive.
        self._buffer_at: dict[tuple[int, int, str], int] = {}
        self.ops: list[OpRecord] = []

    def tensor(
        self,
        shape: Sequence[int],
        type_: int,
        name: str,
        data: np.ndarray | None = None,
        quantization: Quantization | None = None,
    ) -> int:
        """Add a tensor (constant when `data` is given) and return its index."""
        buffer = 0
        if data is not None:
            flat = np.ascontiguousarray(data).reshape(-1)
            key = (flat.ctypes.data, flat.nbytes, flat.dtype.str)
            buffer = self._buffer_at.get(key, 0) if flat.nbytes else 0
            if buffer and self.buffers[buffer].ctypes.data != key[0]:
                buffer = 0  # that buffer was replaced (`dynamic._infer`): the address was reused
            if not buffer:
                self.buffers.append(flat)
                buffer = self._buffer_at[key] = len(self.buffers) - 1
        self.tensors.append(TensorRecord(tuple(int(d) for d in shape), type_, name, buffer, quantization))
        return len(self.tensors) - 1

    def data(self, tensor: int) -> np.ndarray | None:
        """The constant data of a tensor (flattened), or None."""
        buffer = self.tensors[tensor].buffer
        return self.buffers[buffer] if buffer else None

    def op(self, code: int, inputs: Sequence[int], outputs: Sequence[int], options: Options | None = None) -> OpRecord:
        record = OpRecord(code, list(inputs), list(outputs), options)
        self.ops.append(record)
        return record

    def finish(
        self,
        inputs: Sequence[int],
        outputs: Sequence[int],
        description: str,
        metadata: dict[str, bytes] | None = None,
        signature: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> bytes:
        """Serialise the model: one subgraph, its opcodes, buffers and metadata, and the
        `serving_default` signature naming `inputs` and `outputs` by `signature`
        (input names, output names; default: the tensors' own names)."""
        t = tfl()
        ops, buffers = self.ops, list(self.buffers)
        tensors, ops, inputs, outputs = _static_inputs_first(self.tensors, ops, inputs, outputs)
        tensors = _unique_names(tensors)
        meta_entries = []
        for name, payload in (metadata or {}).items():
            buffers.append(np.frombuffer(payload, dtype=np.uint8))
            meta_entries.append((name, len(buffers) - 1))

        data_bytes = sum(b.nbytes + _WEIGHT_ALIGN for b in buffers if b is not None)
        model = _ModelBytes(data_bytes + 64 * (len(tensors) + len(ops)) + 4096)
        b = model.builder

        buffer_offsets = [write_buffer(b, t, data, model.holes) for data in buffers]
        tensor_offsets = [self._tensor(b, t, rec) for rec in tensors]

        codes: dict[int, int] = {}
        for rec in ops:
            codes.setdefault(rec.code, len(codes))
        op_offsets = [self._operator(b, t, rec, codes[rec.code]) for rec in ops]

        name = b.CreateString("main")
        tensors_vec = _offsets(b, tensor_offsets)
        inputs_vec = _ints(b, inputs)
        outputs_vec = _ints(b, outputs)
        ops_vec = _offsets(b, op_offsets)
        t.SubGraphStart(b)
        t.SubGraphAddTensors(b, tensors_vec)
        t.SubGraphAddInputs(b, inputs_vec)
        t.SubGraphAddOutputs(b, outputs_vec)
        t.SubGraphAddOperators(b, ops_vec)
        t.SubGraphAddName(b, name)
        subgraph = t.SubGraphEnd(b)

        versions = {getattr(t.BuiltinOperator, name): v for name, v in _MIN_VERSIONS.items()}
        code_offsets = []
        for code in codes:
            t.OperatorCodeStart(b)
            t.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, t.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
            t.OperatorCodeAddBuiltinCode(b, code)
            t.OperatorCodeAddVersion(b, versions.get(code, 1))
            code_offsets.append(t.OperatorCodeEnd(b))

        meta_offsets = []
        for meta_name, buffer in meta_entries:
            s = b.CreateString(meta_name)
            t.MetadataStart(b)
            t.MetadataAddName(b, s)
            t.MetadataAddBuffer(b, buffer)
            meta_offsets.append(t.MetadataEnd(b))

        desc = b.CreateString(description)
        codes_vec = _offsets(b, code_offsets)
        subgraphs_vec = _offsets(b, [subgraph])
        buffers_vec = _offsets(b, buffer_offsets)
        meta_vec = _offsets(b, meta_offsets) if meta_offsets else None
        if signature is None:
            signature = ([tensors[i].name for i in inputs], [tensors[i].name for i in outputs])
        signature_vec = _offsets(b, [_signature(b, t, inputs, outputs, signature)])
        t.ModelStart(b)
        t.ModelAddVersion(b, 3)
        t.ModelAddOperatorCodes(b, codes_vec)
        t.ModelAddSubgraphs(b, subgraphs_vec)
        t.ModelAddDescription(b, desc)
        t.ModelAddBuffers(b, buffers_vec)
        if meta_vec is not None:
            t.ModelAddMetadata(b, meta_vec)
        t.ModelAddSignatureDefs(b, signature_vec)
        b.Finish(t.ModelEnd(b), file_identifier=b"TFL3")
        return model.output()

    def prune(self, inputs: Sequence[int], outputs: Sequence[int]) -> tuple[list[int], list[int]]:
        """Drop operators no output depends on, and tensors and buffers nothing refers to.

        Tensor indices are renumbered: returns the new (inputs, outputs)."""
        needed = set(outputs)
        ops = []
        for rec in reversed(self.ops):
            if any(o in needed for o in rec.outputs):
                ops.append(rec)
                needed.update(i for i in rec.inputs if i != ABSENT)
        ops.reverse()
        used = set(inputs) | set(outputs) | {i for rec in ops for i in (*rec.inputs, *rec.outputs)} - {ABSENT}
        used |= {q.blockwise.scales for i in used if (q := self.tensors[i].quantization) and q.blockwise}
        used = sorted(used)
        tensor_index = {old: new for new, old in enumerate(used)}
        tensor_index[ABSENT] = ABSENT
        buffer_index = {0: 0}
        buffers: list[np.ndarray | None] = [None]
        tensors = []
        for old in used:
            rec = self.tensors[old]
            if rec.buffer and rec.buffer not in buffer_index:
                buffer_index[rec.buffer] = len(buffers)
                buffers.append(self.buffers[rec.buffer])
            quantization = rec.quantization
            if quantization is not None and quantization.blockwise is not None:
                blockwise = quantization.blockwise
                used_scales = tensor_index[blockwise.scales]
                quantization = Quantization(blockwise=Blockwise(used_scales, blockwise.block_size))
            tensors.append(TensorRecord(rec.shape, rec.type, rec.name, buffer_index[rec.buffer], quantization,
                                        rec.signature))
        self.ops = [
            OpRecord(r.code, [tensor_index[i] for i in r.inputs], [tensor_index[o] for o in r.outputs], r.options)
            for r in ops
        ]
        self.tensors, self.buffers = tensors, buffers
        # a constant given again after pruning (a hook before `finish`) must find its new
        # index, never an old one past the end or another array's
        self._buffer_at = {key: buffer_index[old] for key, old in self._buffer_at.items() if old in buffer_index}
        return [tensor_index[i] for i in inputs], [tensor_index[o] for o in outputs]

    @staticmethod
    def _tensor(b: Any, t: Any, rec: TensorRecord) -> int:
        name = b.CreateString(rec.name)
        shape = _ints(b, rec.shape)
        signature = _ints(b, rec.signature) if rec.signature is not None else None
        quantization = _quantization(b, t, rec.quantization) if rec.quantization else None
        t.TensorStart(b)
        t.TensorAddShape(b, shape)
        if signature is not None:
            t.TensorAddShapeSignature(b, signature)
        t.TensorAddType(b, rec.type)
        t.TensorAddBuffer(b, rec.buffer)
        t.TensorAddName(b, name)
        if quantization is not None:
            t.TensorAddQuantization(b, quantization)
        return t.TensorEnd(b)

    @staticmethod
    def _operator(b: Any, t: Any, rec: OpRecord, opcode_index: int) -> int:
        options = _options(b, t, rec.options) if rec.options else None
        inputs = _ints(b, rec.inputs)
        outputs = _ints(b, rec.outputs)
        t.OperatorStart(b)
        t.OperatorAddOpcodeIndex(b, opcode_index)
        t.OperatorAddInputs(b, inputs)
        t.OperatorAddOutputs(b, outputs)
        if options is not None:
            t.OperatorAddBuiltinOptionsType(b, getattr(t.BuiltinOptions, rec.options.table))
            t.OperatorAddBuiltinOptions(b, options)
        return t.OperatorEnd(b)


def _quantization(b: Any, t: Any, q: Quantization) -> int:
    details = None
    if q.blockwise is not None:
        t.BlockwiseQuantizationStart(b)
        t.BlockwiseQuantizationAddScales(b, q.blockwise.scales)
        t.BlockwiseQuantizationAddZeroPoints(b, ABSENT)  # symmetric: no zero points
        t.BlockwiseQuantizationAddBlockSize(b, q.blockwise.block_size)
        details = t.BlockwiseQuantizationEnd(b)
    scale = b.CreateNumpyVector(np.asarray(q.scale, dtype=np.float32)) if q.scale else None
    zero_point = b.CreateNumpyVector(np.asarray(q.zero_point, dtype=np.int64)) if q.scale else None
    t.QuantizationParametersStart(b)
    if scale is not None:
        t.QuantizationParametersAddScale(b, scale)
        t.QuantizationParametersAddZeroPoint(b, zero_point)
        t.QuantizationParametersAddQuantizedDimension(b, q.axis)
    if details is not None:
        t.QuantizationParametersAddDetailsType(b, t.QuantizationDetails.BlockwiseQuantization)
        t.QuantizationParametersAddDetails(b, details)
    return t.QuantizationParametersEnd(b)


def _unique_names(tensors: list[TensorRecord]) -> list[TensorRecord]:
    """The records with every repeated name made unique by a numeric suffix (LiteRT's
    tools, e.g. ai-edge-quantizer, key tensors by name)."""
    seen: dict[str, int] = {}
    taken = {rec.name for rec in tensors}
    out = []
    for rec in tensors:
        name = rec.name
        if name in seen:
            count = seen[name]
            while f"{name}_{count}" in taken:
                count += 1
            seen[name] = count + 1
            taken.add(f"{name}_{count}")
            rec = TensorRecord(rec.shape, rec.type, f"{name}_{count}", rec.buffer, rec.quantization)
        else:
            seen[name] = 1
        out.append(rec)
    return out


def _signature(b: Any, t: Any, inputs: Sequence[int], outputs: Sequence[int],
               names: tuple[Sequence[str], Sequence[str]]) -> int:
    """The `serving_default` SignatureDef of subgraph 0."""
    maps = []
    for indices, labels in ((inputs, names[0]), (outputs, names[1])):
        offsets = []
        for index, label in zip(indices, labels):
            s = b.CreateString(label)
            t.TensorMapStart(b)
            t.TensorMapAddName(b, s)
            t.TensorMapAddTensorIndex(b, index)
            offsets.append(t.TensorMapEnd(b))
        maps.append(_offsets(b, offsets))
    key = b.CreateString("serving_default")
    t.SignatureDefStart(b)
    t.SignatureDefAddInputs(b, maps[0])
    t.SignatureDefAddOutputs(b, maps[1])
    t.SignatureDefAddSignatureKey(b, key)
    t.SignatureDefAddSubgraphIndex(b, 0)
    return t.SignatureDefEnd(b)


def write_buffer(b: Any, t: Any, data: np.ndarray | None, holes: list[_Hole] | None = None) -> int:
    """A Buffer table; its data aligned so runtimes may read it in place. With `holes`
    (`_ModelBytes`), the data is left out of the builder and listed there instead."""
    vec = None
    if data is not None and data.size:
        b.Prep(_WEIGHT_ALIGN, data.nbytes)
        vec = _byte_vector(b, data, holes)
    t.BufferStart(b)
    if vec is not None:
        t.BufferAddData(b, vec)
    return t.BufferEnd(b)


def _byte_vector(b: flatbuffers.Builder, data: np.ndarray, holes: list[_Hole] | None) -> int:
    """A [ubyte] vector of `data`'s bytes (a contiguous array): copied straight from the
    array's memory into the builder, or, given `holes`, its place left blank and listed.

    This is the vector `CreateNumpyVector` writes, without its two copies: it byte-swaps
    any dtype whose byte order is not "<" (uint8's is "|", so every weight was copied),
    then calls `tobytes` (a second copy); for ResNet-18's 79 MB that was ~160 MB of fresh
    memory per export (bench/README.md, "Where ResNet-18's lowering time goes"). The
    bytes are the same: weights are stored in the machine's (little-endian) order.
    """
    view = memoryview(data).cast("B")
    b.StartVector(1, len(view), 1)
    b.head -= len(view)
    if holes is None:
        b.Bytes[b.head : b.head + len(view)] = view
    else:
        holes.append(_Hole(b.Offset(), view))
    b.vectorNumElems = len(view)
    return b.EndVector()


@dataclass(frozen=True)
class _Hole:
    """Constant data left out of the builder: its bytes, and where they start, counted
    from the end of the model (a builder grows at the front, so that never moves)."""

    from_end: int
    data: memoryview


class _ModelBytes:
    """A model serialized with its constant data copied once, into the final ``bytes``.

    The builder writes into an anonymous memory map, whose pages the system provides
    only when written: the weights' places in it are left blank (`_Hole`), never
    touched, and `output` joins the written parts and the weights. A builder in a
    ``bytearray`` zeroes all of it up front, the weights are copied into it, and it is
    copied again into ``bytes``: two more passes over ResNet-18's 79 MB of fresh memory.
    """

    def __init__(self, size: int) -> None:
        self.builder = flatbuffers.Builder(0)
        self.builder.Bytes = mmap.mmap(-1, size)  # grows into a bytearray if ever too small
        self.builder.head = size
        self.holes: list[_Hole] = []

    def output(self) -> bytes:
        """The finished model's bytes, the holes filled with their data."""
        memory = self.builder.Bytes
        with memoryview(memory) as written:
            parts, at = [], self.builder.Head()
            for hole in sorted(self.holes, key=lambda h: -h.from_end):
                start = len(memory) - hole.from_end
                parts += [written[at:start], hole.data]
                at = start + len(hole.data)
            parts.append(written[at:])
            model = b"".join(parts)
            for part in parts[::2]:
                part.release()
        if isinstance(memory, mmap.mmap):
            memory.close()
        return model


def _options(b: Any, t: Any, options: Options) -> int:
    vectors = {k: _ints(b, v) for k, v in options.fields.items() if isinstance(v, (list, tuple))}
    getattr(t, f"{options.table}Start")(b)
    for key, value in options.fields.items():
        getattr(t, f"{options.table}Add{key}")(b, vectors.get(key, value))
    return getattr(t, f"{options.table}End")(b)


def _ints(b: Any, values: Sequence[int]) -> int:
    return b.CreateNumpyVector(np.asarray(values, dtype=np.int32).reshape(-1))


def _offsets(b: Any, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _static_inputs_first(tensors: list[TensorRecord], ops: list[OpRecord], inputs: Sequence[int],
                         outputs: Sequence[int]) -> tuple[list[TensorRecord], list[OpRecord], list[int], list[int]]:
    """A model with dynamic dims renumbered so that its inputs of static shape are its
    first tensors (a model without any: unchanged).

    LiteRT places the inputs at the start of its arena in tensor order and re-plans the
    arena when an input is resized: a static input placed after a resized one would
    move, and an input whose buffer lives in place (an LLM's KV cache,
    `runner.TfliteExecutable.input_buffer`) must not.
    """
    if not any(rec.signature is not None and -1 in rec.signature for rec in tensors):
        return tensors, ops, list(inputs), list(outputs)
    static = [i for i in inputs if tensors[i].signature is None or -1 not in tensors[i].signature]
    first = set(static)
    order = static + [i for i in range(len(tensors)) if i not in first]
    index = {old: new for new, old in enumerate(order)}
    index[ABSENT] = ABSENT
    renumbered = []
    for old in order:
        rec, q = tensors[old], tensors[old].quantization
        if q is not None and q.blockwise is not None:
            rec = dataclasses.replace(rec, quantization=dataclasses.replace(
                q, blockwise=Blockwise(index[q.blockwise.scales], q.blockwise.block_size)))
        renumbered.append(rec)
    ops = [OpRecord(r.code, [index[i] for i in r.inputs], [index[o] for o in r.outputs], r.options) for r in ops]
    return renumbered, ops, [index[i] for i in inputs], [index[o] for o in outputs]
