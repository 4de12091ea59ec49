"""The op lowering table: one entry per aten op, used both to answer support and to write.

An entry knows the dtypes it takes, an optional shape/argument check that returns a
reason to decline, how to emit the op, and which TFLite ops that emit may write
(`written_ops`, for a backend whose compiler judges TFLite ops). `check_node` is the
single support question; `writer_support` asks it for the partitioner and the writer
asks it again before writing, so "supported" and "writable" cannot drift apart.

An entry may also say how the op is written on int8 tensors (`Lowering.int8`): its
emit, and its `Int8Signature`, which is both what a quantizer annotates (so only ops
the writer can write in int8 get quantized) and what the writer checks in a
quantized graph before writing the op in int8 (int8_plan.py). Quantize and
dequantize ops have entries of their own, keyed by their qualified name (`lookup`).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch.fx import Node

from edgeport import support

aten = torch.ops.aten

FLOAT = frozenset({torch.float32})
NUMERIC = frozenset({torch.float32, torch.int32, torch.int64})
ANY = frozenset({torch.float32, torch.int32, torch.int64, torch.bool})

IsConst = Callable[[Node], bool]
Check = Callable[[Node, IsConst], "str | None"]


class ConstantValues:
    """A constant input's tensor by node (None for a folded node or a runtime value), and
    facts about such tensors, each computed once per program (`fact`): support asks about
    each weight once per node of its linear's chain, and an LLM has hundreds of large ones."""

    def __init__(self, value: Callable[[Node], "torch.Tensor | None"]) -> None:
        self._value = value
        self._facts: dict[tuple[str, int], tuple[torch.Tensor, Any]] = {}  # (fact, id) -> (tensor, value)

    def __call__(self, node: Node) -> "torch.Tensor | None":
        return self._value(node)

    def fact(self, name: str, tensor: torch.Tensor, compute: Callable[[torch.Tensor], Any]) -> Any:
        """``compute(tensor)``, remembered (the tensor is held, so its id stays its own)."""
        key = (name, id(tensor))
        if key not in self._facts:
            self._facts[key] = (tensor, compute(tensor))
        return self._facts[key][1]


class Constants:
    """The nodes known at compile time: callable as an `IsConst`, and `value(node)`
    gives a constant input's tensor (None for a folded node or a runtime value)."""

    def __init__(self, nodes: frozenset[Node], value: Callable[[Node], "torch.Tensor | None"]) -> None:
        self.nodes = nodes
        self.value = ConstantValues(value)

    def __call__(self, node: Node) -> bool:
        return node in self.nodes

    def __contains__(self, node: object) -> bool:
        return node in self.nodes
# The TFLite builtins an emit may write for a node: fixed, or a function of the node.
Writes = frozenset[str] | Callable[[Node, IsConst], Iterable[str]]

# Ops the emitter itself writes around any lowering: layout changes, reshapes, dtype
# casts and fp16 weight dequantization. `written_ops` leaves them out.
PLUMBING = frozenset({"TRANSPOSE", "RESHAPE", "CAST", "DEQUANTIZE"})


@dataclass(frozen=True)
class Int8Signature:
    """Which tensors of an op are int8 when it is written in int8.

    `activations`: argument positions read as per-tensor int8 (a list argument, as
    cat's, means each element). `weight`: the position of a constant weight stored as
    int8 per output channel (dim 0), with zero point 0; `bias`: the position of its
    constant bias, stored int32 at input scale x weight scale. `output`: "own" parameters,
    "shared" with the first activation (ops that only move or pick values), or `fixed`
    (scale, zero point) that the TFLite kernel requires. `stored`: the activation
    positions that may instead hold a stored tensor (a position embedding, a layer
    scale), quantized per tensor from its own values and written as an int8 constant.
    """

    activations: tuple[int, ...] = (0,)
    weight: int | None = None
    bias: int | None = None
    output: str = "own"
    fixed: tuple[float, int] | None = None
    stored: tuple[int, ...] = ()


@dataclass(frozen=True)
class Int8:
    """How an op is written on int8 tensors: `emit(em, node, form)` (form: int8_plan.Int8Form)
    and a structural `check` asked on the float graph too, before anyone quantizes.

    `xnnpack`: whether LiteRT's XNNPACK delegate runs the int8 operator. When it does
    not, TFLite's own int8 kernel runs it outside the delegate, splitting it; the cpu
    quantizer then leaves the op float, between a DEQUANTIZE and a QUANTIZE that
    XNNPACK does run (measured 6.5x faster for six int8 HARD_SWISHes after convs).

    `view`: the op only relays its input's values (a reshape, a permute, an expand). In
    int8 it is worth its place only next to an int8 op: between two ops that stay float
    it adds a QUANTIZE and a DEQUANTIZE and rounds the values, so the quantizer leaves
    it float there (quantizer.py, `_float_views`).
    """

    emit: Callable[[Any, Node, Any], Any]
    signature: Int8Signature
    check: Check | None = None
    xnnpack: bool = True
    view: bool = False


@dataclass(frozen=True)
class Lowering:
    """How one aten op becomes TFLite operators.

    `writes`: the TFLite builtins `emit` may write for a node, besides PLUMBING; declared
    next to `emit` so that the two change together.
    `outputs`: for a multi-output op, the getitem indices it produces (None = all).
    `fuses_activation`: its TFLite op takes a fused RELU/RELU6 activation.
    `as_activation`: for an activation op, the fused ActivationFunctionType name it
    can become ("RELU", "RELU6", "RELU_N1_TO_1"), or None for this node.
    `int8`: how it is written on int8 tensors, when it can be.
    """

    emit: Callable[[Any, Node], Any]
    dtypes: frozenset[torch.dtype]
    writes: Writes
    check: Check | None = None
    outputs: tuple[int, ...] | None = None
    fuses_activation: bool = False
    as_activation: Callable[[Node], "str | None"] | None = None
    int8: Int8 | None = None


LOWERINGS: dict[Any, Lowering] = {}

# Ops that only assert what export already proved about static shapes and dtypes: they
# compute nothing, so the writer takes them and writes nothing (they are never live).
CHECKS_ONLY = frozenset({aten._assert_tensor_metadata.default, aten._assert_scalar.default})

# Ops computed from shapes alone: folded to a constant even when their tensor
# argument is a runtime value (e.g. the zeros attention writes with full_like).
SHAPE_ONLY = frozenset({aten.full_like.default, aten.zeros_like.default, aten.ones_like.default})


def lowering(
    *ops: Any,
    writes: Writes,
    dtypes: frozenset[torch.dtype] = FLOAT,
    check: Check | None = None,
    outputs: tuple[int, ...] | None = None,
    fuses_activation: bool = False,
    as_activation: Callable[[Node], "str | None"] | None = None,
) -> Callable:
    """Register the decorated `emit(em, node)` for each of `ops`."""

    def register(emit: Callable) -> Callable:
        entry = Lowering(emit, dtypes, writes, check, outputs, fuses_activation, as_activation)
        for op in ops:
            LOWERINGS[op] = entry
        return emit

    return register


def int8_lowering(*ops: Any, signature: Int8Signature, check: Check | None = None, xnnpack: bool = True,
                  view: bool = False) -> Callable:
    """Register the decorated `emit(em, node, form)` as the int8 form of each of `ops`
    (each must already have its float lowering)."""

    def register(emit: Callable) -> Callable:
        for op in ops:
            LOWERINGS[op] = dataclasses.replace(LOWERINGS[op], int8=Int8(emit, signature, check, xnnpack, view))
        return emit

    return register


def by_target(names: dict[Any, str]) -> Callable[[Node, IsConst], frozenset[str]]:
    """`writes` for a lowering that writes one op, looked up by the node's target."""

    def writes(node: Node, is_const: IsConst) -> frozenset[str]:
        return frozenset({names[node.target]})

    return writes


def table() -> dict[Any, Lowering]:
    """The complete table (importing the op modules fills it)."""
    from . import ops  # noqa: F401  (registers every lowering)

    return LOWERINGS


def lookup(target: Any) -> Lowering | None:
    """The entry for a node's target: by the op itself, else by its qualified name
    (how quantize/dequantize ops are registered, so they need no import)."""
    entries = table()
    entry = entries.get(target)
    if entry is None and isinstance(target, torch._ops.OpOverload):
        entry = entries.get(target._schema.name)
    return entry


def input_nodes(node: Node) -> list[Node]:
    out: list[Node] = []
    for a in (*node.args, *node.kwargs.values()):
        if isinstance(a, Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, Node))
    return out


def foldable(node: Node, is_const: IsConst) -> bool:
    """True when the node's value can be computed at compile time with torch."""
    if node.op != "call_function":
        return False
    target = node.target
    if target is operator.getitem:
        return is_const(node.args[0])
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in target.tags:
        return False
    inputs = input_nodes(node)
    if target in SHAPE_ONLY:
        inputs = inputs[1:]
    return all(is_const(n) for n in inputs)


def check_node(node: Node, is_const: IsConst) -> str | None:
    """None when the writer can write `node`, else the reason it cannot."""
    if node.op != "call_function" or node.target in CHECKS_ONLY:
        return None
    tensors = support.node_tensors(node)  # listed once, asked by each rule below
    reason = support.first_reason(node, tensors, _STATIC_SHAPES)
    if reason:
        return reason
    if foldable(node, is_const):
        return None
    if node.target is operator.getitem:
        source, index = node.args
        entry = lookup(getattr(source, "target", None))
        if entry is None:
            return f"an output of {support.op_label(source)}, which has no TFLite lowering"
        if entry.outputs is not None and index not in entry.outputs:
            return f"output {index} of {support.op_label(source)} is not produced by the TFLite writer"
        return None
    entry = lookup(node.target)
    if entry is None:
        return f"no TFLite lowering for {support.op_label(node)}"
    reason = support.first_reason(node, tensors, _NO_EMPTY)
    if reason:
        return reason
    unwritten = _unwritten_outputs_read(node, entry.outputs)
    if unwritten:
        # Declined here, on the producer: its getitem users follow it to whichever
        # backend runs it, so declining only the getitem could never take effect.
        written = ", ".join(str(i) for i in entry.outputs)
        return (f"{support.op_label(node)}: output {unwritten[0]} is read; "
                f"the TFLite writer produces only output {written}")
    reason = support.first_reason(node, support.without_constants(tensors, is_const), _DTYPES)  # constants fold
    if reason:
        return reason
    if entry.check is not None:
        reason = entry.check(node, is_const)
        if reason:
            return f"{support.op_label(node)}: {reason}"
    return None


def written_ops(node: Node, is_const: IsConst) -> frozenset[str]:
    """The TFLite builtins the writer may write for `node`, besides PLUMBING: none for a
    constant (folded at compile time), an output pick or a shape assertion.

    Ask only about a node `check_node` accepts: raises ValueError for one without a lowering.
    """
    if node.op != "call_function" or node.target in CHECKS_ONLY or node.target is operator.getitem:
        return frozenset()
    if foldable(node, is_const):
        return frozenset()
    entry = lookup(node.target)
    if entry is None:
        raise ValueError(f"no TFLite lowering for {support.op_label(node)}: ask writer_support first")
    writes = entry.writes
    return writes if isinstance(writes, frozenset) else frozenset(writes(node, is_const))


def _unwritten_outputs_read(node: Node, produced: tuple[int, ...] | None) -> list[int]:
    if produced is None:
        return []
    # A getitem nothing reads (PT2E's convert leaves the unused indices of a max pool) is not a read.
    return sorted(support.read_outputs(node) - set(produced))


# `check_node`'s tensor rules, built once.
_STATIC_SHAPES = support.symbolic_shape("{op}: symbolic shape {shape} (the TFLite writer needs static shapes)")
# XNNPACK fails to prepare a model holding a zero-size tensor ("failed to reshape"): the
# interpreter could not even load the program, so such a node stays portable.
_NO_EMPTY = support.empty_tensor("{op}: zero-size tensor {shape} (XNNPACK cannot prepare a model holding one)")
_DTYPES = support.dtype_not_in(lambda node: lookup(node.target).dtypes,
                               "{op}: {role} dtype {dtype} not supported (takes {allowed})")


def meta(node: Any) -> Any:
    """The FakeTensor (or list) a node produces."""
    return node.meta.get("val") if isinstance(node, Node) else None


def shape(node: Any) -> tuple[int, ...]:
    return tuple(meta(node).shape)
