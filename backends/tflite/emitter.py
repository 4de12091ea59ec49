"""What op lowerings write with: values, constants, layout changes and operators.

An op lowering reads its arguments through `Emitter.arg` (a `Value` for a runtime
tensor, a torch tensor for a constant, or a Python scalar) and writes operators with
`Emitter.op`. Layout changes are asked for, never hand-written: `to_perm` emits a
RESHAPE when only size-1 dims move and a TRANSPOSE otherwise, and caches the result
so each value is transposed at most once per layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.fx import Node

from . import layout
from .flatbuffer import ModelBuilder, OpRecord, Options
from .layout import Perm
from .qdq import QParams
from .schema import tensor_type, tfl

# Weights at least this large are stored as float16 when fp16 is asked for; smaller
# constants (scalars, shapes, norms) stay float32, where they cost nothing.
_FP16_MIN_ELEMENTS = 256


@dataclass(frozen=True)
class Value:
    """A runtime tensor of the partition as it lives in the artifact.

    `shape` and `dtype` are torch's; the TFLite tensor holds `logical.permute(perm)`.
    An int8 value carries its `quant` parameters, which layout changes keep.
    """

    tensor: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    perm: Perm
    quant: QParams | None = None

    @property
    def physical_shape(self) -> tuple[int, ...]:
        return layout.apply(self.perm, self.shape)

    @property
    def is_identity(self) -> bool:
        return self.perm == layout.identity(len(self.shape))


@dataclass
class Plan:
    """Decisions taken over the whole graph before any operator is written.

    `alias[n] = m`: node n is written as node m's value (the output of a batch norm
    folded into conv m, an activation fused into m, or the quantize reading int8 op m).
    `bn_fold[conv] = bn` folds bn's affine map into the conv's weights;
    `fused[producer] = "RELU6"` fuses an activation.

    In a quantized graph (see int8_plan.py): `int8[op]` is how an op is written on int8
    tensors, `hybrid[linear]` the float input of a FULLY_CONNECTED with integer weights
    that quantizes its input at run time, and `unwritten` the dequantize (and dynamic
    quantization) nodes nothing reads as float, which are never written.
    `xnnpack_only`: write in int8 only the operators XNNPACK runs in int8 (`Int8.xnnpack`).
    """

    alias: dict[Node, Node] = dataclasses.field(default_factory=dict)
    bn_fold: dict[Node, Node] = dataclasses.field(default_factory=dict)
    fused: dict[Node, str] = dataclasses.field(default_factory=dict)
    int8: dict[Node, Any] = dataclasses.field(default_factory=dict)  # op -> int8_plan.Int8Form
    hybrid: dict[Node, Node] = dataclasses.field(default_factory=dict)
    unwritten: set[Node] = dataclasses.field(default_factory=set)
    xnnpack_only: bool = False


class Emitter:
    """The state of one model being written: the builder, the value of every node, caches."""

    def __init__(self, builder: ModelBuilder, plan: Plan, fp16: bool, winograd: bool = False) -> None:
        self.builder = builder
        self.plan = plan
        self.fp16 = fp16
        self.winograd = winograd  # large 3x3 convolutions as Winograd F(2x2, 3x3) (ops/winograd.py)
        self.env: dict[Node, Any] = {}
        # (tensor, its layout, wanted layout) -> the relaid value. The source layout is
        # part of the key: two views of one tensor (x and x.transpose) need different moves.
        self._layouts: dict[tuple[int, Perm, Perm], Value] = {}
        self._consts: dict[tuple[int, Any], tuple[Any, int]] = {}
        self._reshaped_from: dict[int, int] = {}  # RESHAPE output tensor -> its input
        self.fused_written: set[Node] = set()  # nodes whose operator took their fused activation

    # -- reading arguments -------------------------------------------------------

    def arg(self, a: Any) -> Any:
        """A node argument resolved: Value, torch constant, scalar, or a list of those."""
        if isinstance(a, Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return [self.arg(x) for x in a]
        return a

    def constant(self, node: Node) -> torch.Tensor | None:
        """The value of a constant node (a weight, or what folds from weights), else None."""
        value = self.env.get(node)
        return value if isinstance(value, torch.Tensor) else None

    def value(self, a: Any, dtype: torch.dtype | None = None) -> Value:
        """A node argument as a Value; constants become constant tensors (identity layout)."""
        v = self.arg(a)
        if isinstance(v, Value):
            return self.cast(v, dtype) if dtype is not None else v
        t = torch.as_tensor(v, dtype=dtype)
        return Value(self.const(t), tuple(t.shape), t.dtype, layout.identity(t.dim()))

    # -- creating tensors and operators -----------------------------------------------

    def new(
        self, shape: Sequence[int], dtype: torch.dtype, name: str, perm: Perm | None = None, quant: QParams | None = None
    ) -> Value:
        """A fresh runtime tensor of logical `shape`, stored in layout `perm` (int8 with
        parameters `quant`)."""
        shape = tuple(int(d) for d in shape)
        perm = layout.identity(len(shape)) if perm is None else tuple(perm)
        quantization = quant.tflite() if quant is not None else None
        index = self.builder.tensor(layout.apply(perm, shape), tensor_type(dtype), name, quantization=quantization)
        return Value(index, shape, dtype, perm, quant)

    def out(self, node: Node, perm: Perm | None = None) -> Value:
        """The output Value of a single-output node, named after it."""
        val = node.meta["val"]
        return self.new(val.shape, val.dtype, node.name, perm)

    def op(self, name: str, inputs: Sequence[int], outputs: Sequence[Value], options: Options | None = None) -> OpRecord:
        """Append a builtin operator by its BuiltinOperator name, e.g. "CONV_2D"."""
        code = getattr(tfl().BuiltinOperator, name)
        return self.builder.op(code, inputs, [v.tensor for v in outputs], options)

    def const(self, data: torch.Tensor | np.ndarray, name: str = "const") -> int:
        """A constant tensor holding `data` (a torch tensor or array, in physical order)."""
        key = (id(data), None)
        if key in self._consts:
            return self._consts[key][1]
        t = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
        dtype = t.dtype
        arr = _to_numpy(t)
        index = self.builder.tensor(arr.shape, tensor_type(dtype), name, arr)
        self._consts[key] = (data, index)  # keep `data` alive so its id stays unique
        return index

    def int_const(self, values: Sequence[Any], name: str = "shape") -> int:
        """An int32 constant (shapes, axes, paddings), of the nesting of `values`."""
        arr = np.asarray(values, dtype=np.int32)
        return self.builder.tensor(arr.shape, tensor_type(torch.int32), name, arr)

    def weight(self, data: np.ndarray, name: str) -> int:
        """A float32 weight tensor; stored as float16 plus a DEQUANTIZE when fp16 is on."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        if not self.fp16 or data.size < _FP16_MIN_ELEMENTS:
            return self.builder.tensor(data.shape, tensor_type(torch.float32), name, data)
        half = self.builder.tensor(data.shape, tensor_type(torch.float16), name + "/fp16", data.astype(np.float16))
        full = self.new(data.shape, torch.float32, name)
        self.op("DEQUANTIZE", [half], [full])
        return full.tensor

    def activation(self, node: Node) -> int:
        """The ActivationFunctionType to fuse into `node`'s operator (NONE if none)."""
        self.fused_written.add(node)
        return self.activation_code(self.plan.fused.get(node, "NONE"))

    @staticmethod
    def activation_code(name: str) -> int:
        return getattr(tfl().ActivationFunctionType, name)

    # -- layout and dtype -------------------------------------------------------------

    def to_perm(self, v: Value, perm: Perm) -> Value:
        """`v` stored in layout `perm`: itself, a RESHAPE (unit dims move) or a TRANSPOSE."""
        perm = tuple(perm)
        if v.perm == perm:
            return v
        key = (v.tensor, v.perm, perm)
        if key not in self._layouts:
            out = self.new(v.shape, v.dtype, self._name(v) + "/layout", perm, v.quant)
            if layout.only_unit_dims_move(v.shape, v.perm, perm):
                self._reshape(v.tensor, out)
            else:
                order = self.int_const(layout.transpose_between(v.perm, perm), "perm")
                self.op("TRANSPOSE", [v.tensor, order], [out])
            self._layouts[key] = out
        return self._layouts[key]

    def to_identity(self, v: Value) -> Value:
        return self.to_perm(v, layout.identity(len(v.shape)))

    def reshape(self, v: Value, shape: Sequence[int], name: str | None = None) -> Value:
        """A logical reshape; keeps a permuted layout when only size-1 dims come or go."""
        shape = tuple(int(d) for d in shape)
        if shape == v.shape:
            return v
        perm = _perm_after_reshape(v, shape)
        if perm is None:
            v = self.to_identity(v)
            perm = layout.identity(len(shape))
        physical = layout.apply(perm, shape)
        if physical == v.physical_shape:
            return Value(v.tensor, shape, v.dtype, perm, v.quant)
        out = self.new(shape, v.dtype, name or self._name(v) + "/reshape", perm, v.quant)
        self._reshape(v.tensor, out)
        return out

    def _reshape(self, source: int, out: Value) -> None:
        """RESHAPE `source` into `out`, from the first tensor of a chain of reshapes (an
        intermediate nobody else reads is then dropped by the builder)."""
        source = self._reshaped_from.get(source, source)
        self.op("RESHAPE", [source, self.int_const(out.physical_shape)], [out])
        self._reshaped_from[out.tensor] = source

    def cast(self, v: Value, dtype: torch.dtype | None) -> Value:
        """`v` converted to `dtype` (a CAST only when the stored type changes)."""
        if dtype is None or v.dtype == dtype:
            return v
        if tensor_type(v.dtype) == tensor_type(dtype):
            return dataclasses.replace(v, dtype=dtype)
        out = self.new(v.shape, dtype, self._name(v) + "/cast", v.perm)
        self.op("CAST", [v.tensor], [out])
        return out

    def broadcast_inputs(
        self, args: Sequence[Any], rank: int, dtype: torch.dtype | Sequence[torch.dtype]
    ) -> tuple[list[int], Perm]:
        """Tensors for an elementwise op over `args`, all in one layout, and that layout.

        The layout is that of the first full-rank runtime operand that is not in torch
        order (so NHWC stays NHWC); constants are permuted at compile time, lower-rank
        runtime operands are reshaped to full rank first.
        """
        target = layout.identity(rank)
        for a in args:
            if isinstance(a, Value) and len(a.shape) == rank and not a.is_identity:
                target = a.perm
                break
        dtypes = [dtype] * len(args) if isinstance(dtype, torch.dtype) else list(dtype)
        tensors = []
        for a, dtype in zip(args, dtypes):
            if isinstance(a, Value):
                v = self.cast(a, dtype)
                if target != layout.identity(rank):
                    if len(v.shape) < rank:
                        v = self.reshape(v, (1,) * (rank - len(v.shape)) + v.shape)
                    v = self.to_perm(v, target)
                elif not v.is_identity:
                    v = self.to_identity(v)
                tensors.append(v.tensor)
            else:
                tensors.append(self._operand_const(a, rank, dtype, target))
        return tensors, target

    def elementwise(
        self,
        op: str,
        args: Sequence[Any],
        shape: Sequence[int],
        dtype: torch.dtype,
        name: str,
        in_dtypes: torch.dtype | Sequence[torch.dtype] | None = None,
        options: Options | None = None,
    ) -> Value:
        """One broadcasting operator over `args` (Values, constants, scalars): its output
        Value of logical `shape` and `dtype`, in the layout `broadcast_inputs` picks.
        Inputs are converted to `in_dtypes` (default: `dtype`)."""
        tensors, perm = self.broadcast_inputs(args, len(shape), dtype if in_dtypes is None else in_dtypes)
        out = self.new(shape, dtype, name, perm)
        self.op(op, tensors, [out], options)
        return out

    def _operand_const(self, a: Any, rank: int, dtype: torch.dtype, target: Perm) -> int:
        key = (id(a), (dtype, target))
        if key in self._consts:
            return self._consts[key][1]
        c = torch.as_tensor(a, dtype=dtype)
        if c.dim() > 0 and target != layout.identity(rank):
            c = c.reshape((1,) * (rank - c.dim()) + tuple(c.shape)).permute(target)
        index = self.const(c.contiguous())
        self._consts[key] = (a, index)
        return index

    def _name(self, v: Value) -> str:
        return self.builder.tensors[v.tensor].name


def _perm_after_reshape(v: Value, shape: tuple[int, ...]) -> Perm | None:
    """A layout in which reshaping `v` to `shape` moves no data, or None.

    Reshape merges or splits runs of logical dims. When every merged run is stored
    contiguous and in order, the stored tensor is already the reshaped one in some
    layout: each run becomes its target dims, in the runs' stored order.
    """
    old = [d for d in range(len(v.shape)) if v.shape[d] != 1]
    new = [d for d in range(len(shape)) if shape[d] != 1]
    groups = _reshape_groups([v.shape[d] for d in old], [shape[d] for d in new])
    if groups is None:
        return None
    stored = [p for p in v.perm if v.shape[p] != 1]  # non-unit logical dims, in stored order
    position = {d: i for i, d in enumerate(stored)}
    runs = []
    for src, dst in groups:
        dims = [old[i] for i in src]
        places = [position[d] for d in dims]
        if places != list(range(places[0], places[0] + len(places))):
            return None  # the run is not stored contiguous and in order
        runs.append((places[0], [new[j] for j in dst]))
    order = [d for _, dims in sorted(runs) for d in dims]
    return layout.with_unit_dims(order, shape)


def _reshape_groups(src: list[int], dst: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of `src` sizes with runs of `dst` sizes of equal product (indices), or None."""
    groups, i, j = [], 0, 0
    while i < len(src) and j < len(dst):
        a, b = [i], [j]
        ps, pd = src[i], dst[j]
        i, j = i + 1, j + 1
        while ps != pd:
            if ps < pd and i < len(src):
                ps *= src[i]
                a.append(i)
                i += 1
            elif pd < ps and j < len(dst):
                pd *= dst[j]
                b.append(j)
                j += 1
            else:
                return None
        groups.append((a, b))
    return groups if i == len(src) and j == len(dst) else None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """Constant data in the type it has inside the artifact (int64 -> int32, checked)."""
    t = t.detach().contiguous()
    if t.dtype == torch.int64:
        if t.numel() and (t.max() > torch.iinfo(torch.int32).max or t.min() < torch.iinfo(torch.int32).min):
            from edgeport import BackendError

            raise BackendError("an int64 constant does not fit int32, the type it has inside a TFLite model")
        t = t.to(torch.int32)
    return t.numpy()
