"""The support toolkit (``from edgeport import support``): checks a backend composes into
its `Backend.support`, each declining with a reason a user can act on.

In the spirit of torch.fx's ``operator_support`` (``chain``, ``OpSupports.decline_if_input_dtype``),
but a check returns a `Support`, so the reason survives composition:

    check = support.all_of(
        support.decline_if_op_in(REFUSED),
        support.decline_if_symbolic("{op}: dynamic shape {shape}; my NPU compiles static sizes"),
        support.decline_if_rank_above(4, "{op}: rank-{rank} {role}; my NPU takes at most {limit} dims"),
        support.decline_if_dtype_not_in({"float32"}, "{op}: {role} dtype {dtype} (takes {allowed})"),
    )

A check is a function ``(node) -> Support``. Reasons are templates filled per tensor:
``{op}`` (the node's op, e.g. ``aten.add.Tensor``), ``{role}`` ("input" or "output"),
``{shape}``, ``{rank}``, ``{dtype}`` (without ``torch.``), ``{allowed}``, ``{limit}``.

Two facts every backend needs are defined once here:

- `node_tensors`: the tensors a node reads and writes. Of a multi-output op only the
  outputs something reads (through a ``getitem`` that has users) count: a max pool's
  unused int64 indices are no reason to decline it.
- `DATA_MOVEMENT` (and `SLICING`): the ops that only relabel or copy data. A partition
  of nothing else costs a boundary copy for no work (bench/lone_ops.py), so backends
  never take them alone (``PartitionRules(never_alone=support.DATA_MOVEMENT)``).

This module imports no torch at import time (a backend's module is imported on the run
side too); the checks import it when they run.
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, NamedTuple

from .backend import Support

if TYPE_CHECKING:
    import torch
    from torch.fx import Node

Check = Callable[["Node"], Support]
# The tensors a check looks at: `node_tensors`, or a narrower selection (`runtime_tensors`).
Tensors = Callable[["Node"], Iterable["TensorUse"]]
# A rule for one tensor: the reason to decline the node for it, or None.
TensorRule = Callable[["Node", "TensorUse"], "str | None"]

# Ops that only relabel or copy a whole tensor, by name (names keep a backend's module free
# of torch at import; `PartitionRules.never_alone` takes them as they are).
DATA_MOVEMENT = frozenset({
    "aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.permute.default",
    "aten.transpose.int", "aten.t.default", "aten.expand.default", "aten.clone.default", "aten.alias.default",
    "aten.lift_fresh_copy.default", "aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default",
    "aten.unsqueeze.default",
})  # fmt: skip
# Ops that copy a part of a tensor: data movement too, for a backend whose call costs more
# than the copy (an NPU's); the cpu's XNNPACK slices in its own graph, so it takes them alone.
SLICING = frozenset({"aten.slice.Tensor", "aten.select.int"})


# The quantize and dequantize ops of a quantized (PT2E-converted) graph, by qualified name
# (`qualified_name`): matching names imports no torchao.
QUANTIZE = "quantized_decomposed::quantize_per_tensor"
DEQUANTIZE = "quantized_decomposed::dequantize_per_tensor"
DEQUANTIZE_CHANNEL = "quantized_decomposed::dequantize_per_channel"
CHOOSE_AFFINE = "torchao::choose_qparams_affine"  # run-time (per token) quantization parameters
QUANTIZE_AFFINE = "torchao::quantize_affine"
DEQUANTIZE_AFFINE = "torchao::dequantize_affine"


class TensorUse(NamedTuple):
    """One tensor a node reads or writes: ``value`` is its fake tensor (dtype, shape).
    (A named tuple: support makes several per node, and it is the cheapest to make.)"""

    role: str  # "input" or "output"
    source: Node  # the node whose value it is: the argument read, or the node itself
    value: torch.Tensor
    index: int | None = None  # which output of a multi-output node


def op_label(node: Node) -> str:
    """How reasons name a node's op: ``aten.add.Tensor``, or the function's name."""
    import torch

    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def qualified_name(node: Any) -> str:
    """"namespace::op" of a node's OpOverload ("" for anything else)."""
    import torch

    target = getattr(node, "target", None)
    return target._schema.name if isinstance(target, torch._ops.OpOverload) else ""


def output_dtype(node: Node) -> torch.dtype | None:
    """The dtype of a single-output node's value; None for anything else."""
    import torch

    value = node.meta.get("val")
    return value.dtype if isinstance(value, torch.Tensor) else None


def read_outputs(node: Node) -> set[int]:
    """The outputs of a multi-output node something reads (through a getitem with users)."""
    return {user.args[1] for user in node.users if user.target is operator.getitem and user.users}


def node_tensors(node: Node) -> list[TensorUse]:
    """The tensors ``node`` reads (its tensor arguments) and writes (its value; of a
    multi-output node, the outputs something reads), from ``meta["val"]``."""
    from torch import Tensor

    uses = [TensorUse("input", arg, value) for arg in node.all_input_nodes
            if isinstance(value := arg.meta.get("val"), Tensor)]
    out = node.meta.get("val")
    if isinstance(out, Tensor):
        uses.append(TensorUse("output", node, out))
    elif isinstance(out, (tuple, list)):
        read = read_outputs(node)
        uses += [TensorUse("output", node, value, i) for i, value in enumerate(out)
                 if i in read and isinstance(value, Tensor)]
    return uses


def without_constants(tensors: Iterable[TensorUse], is_constant: Callable[[Node], bool]) -> list[TensorUse]:
    """``tensors`` without the inputs known at compile time (weights, folded values)."""
    return [t for t in tensors if t.role == "output" or not is_constant(t.source)]


def runtime_tensors(is_constant: Callable[[Node], bool]) -> Tensors:
    """`node_tensors` without the inputs known at compile time (weights, folded values)."""
    return lambda node: without_constants(node_tensors(node), is_constant)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fields(node: Node, tensor: TensorUse) -> dict[str, Any]:
    shape = tuple(tensor.value.shape)
    return {"op": op_label(node), "role": tensor.role, "shape": shape, "rank": len(shape),
            "dtype": dtype_name(tensor.value.dtype)}


# -- tensor rules: what the checks below decline a tensor for --------------------------------
#
# Build a rule once (at import, or in `Backend.prepare`) and apply it per node: to compose
# per support call costs a few objects per node, thousands per export.


def symbolic_shape(reason: str) -> TensorRule:
    """A tensor of symbolic (dynamic) size."""

    def rule(node: Node, tensor: TensorUse) -> str | None:
        if not getattr(tensor.value, "_has_symbolic_sizes_strides", True):  # torch's own flag: fast
            return None
        for size in tensor.value.shape:
            if not isinstance(size, int):
                return reason.format(**_fields(node, tensor))
        return None

    return rule


def rank_above(limit: int, reason: str) -> TensorRule:
    """A tensor of more than `limit` dims."""

    def rule(node: Node, tensor: TensorUse) -> str | None:
        if tensor.value.dim() <= limit:
            return None
        return reason.format(**_fields(node, tensor), limit=limit)

    return rule


def empty_tensor(reason: str) -> TensorRule:
    """A zero-size tensor (a dim of 0)."""

    def rule(node: Node, tensor: TensorUse) -> str | None:
        if 0 not in tensor.value.shape:
            return None
        return reason.format(**_fields(node, tensor))

    return rule


def dtype_not_in(dtypes: Collection[torch.dtype | str] | Callable[[Node], Collection[torch.dtype | str]],
                 reason: str) -> TensorRule:
    """A tensor of a dtype outside `dtypes` (a set, or a function of the node giving the
    node's set). Dtypes may be named (``{"float32", "float16"}``), so a backend composes
    its checks at import without importing torch, which its run side must not."""

    fixed = None if callable(dtypes) else frozenset(dtypes)

    def rule(node: Node, tensor: TensorUse) -> str | None:
        allowed = _dtype_names(fixed if fixed is not None else frozenset(dtypes(node)))
        if dtype_name(tensor.value.dtype) in allowed:
            return None
        return reason.format(**_fields(node, tensor), allowed=", ".join(sorted(allowed)))

    return rule


@functools.lru_cache(maxsize=256)  # a backend has a few dtype sets, asked of every tensor
def _dtype_names(dtypes: frozenset[torch.dtype | str]) -> frozenset[str]:
    """Each of `dtypes` by name ("float32"), given as a torch dtype or a name. A name
    torch has no dtype for raises: a typo must not decline every tensor in silence."""
    import torch

    names = frozenset(d.removeprefix("torch.") if isinstance(d, str) else dtype_name(d) for d in dtypes)
    unknown = sorted(n for n in names if not isinstance(getattr(torch, n, None), torch.dtype))
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))} names no torch dtype (names are torch's without "
                         "'torch.': 'float32', 'float16', 'int8')")
    return names


def first_reason(node: Node, tensors: Iterable[TensorUse], rule: TensorRule) -> str | None:
    """The reason `rule` gives for the first of `tensors` it declines, or None: for a
    check that lists a node's tensors once and asks several rules about them."""
    for tensor in tensors:
        reason = rule(node, tensor)
        if reason:
            return reason
    return None


# -- checks ---------------------------------------------------------------------------------


def decline_if_tensor(rule: TensorRule, tensors: Tensors = node_tensors) -> Check:
    """Decline for the first tensor `rule` gives a reason for (the general form of the
    checks below, for a backend's own per-tensor rule)."""

    def check(node: Node) -> Support:
        reason = first_reason(node, tensors(node), rule)
        return Support.no(reason) if reason else Support.yes()

    return check


def decline_if_symbolic(reason: str, tensors: Tensors = node_tensors) -> Check:
    """Decline a node with a tensor of symbolic (dynamic) size."""
    return decline_if_tensor(symbolic_shape(reason), tensors)


def decline_if_rank_above(limit: int, reason: str, tensors: Tensors = node_tensors) -> Check:
    """Decline a node with a tensor of more than `limit` dims."""
    return decline_if_tensor(rank_above(limit, reason), tensors)


def decline_if_empty(reason: str, tensors: Tensors = node_tensors) -> Check:
    """Decline a node with a zero-size tensor (a dim of 0): runtimes that prepare a whole
    graph ahead (XNNPACK, QNN HTP) fail on one, taking the partition with them."""
    return decline_if_tensor(empty_tensor(reason), tensors)


def decline_if_dtype_not_in(dtypes: Collection[torch.dtype | str] | Callable[[Node], Collection[torch.dtype | str]],
                            reason: str, tensors: Tensors = node_tensors) -> Check:
    """Decline a node with a tensor of a dtype outside `dtypes` (a set, or a function of
    the node giving the node's set; dtypes or their names, "float32")."""
    return decline_if_tensor(dtype_not_in(dtypes, reason), tensors)


def decline_if_op_in(refused: Mapping[Any, str], reason: str = "{op}: {why}") -> Check:
    """Decline the ops in `refused` (an op, its overload packet or its name -> why)."""

    def check(node: Node) -> Support:
        target = node.target
        why = refused.get(target) or refused.get(getattr(target, "overloadpacket", None)) or refused.get(str(target))
        return Support.no(reason.format(op=op_label(node), why=why)) if why else Support.yes()

    return check


def all_of(*checks: Check) -> Check:
    """Yes when every check says yes; else the first no, with its reason."""

    def check(node: Node) -> Support:
        for one in checks:
            answer = one(node)
            if not answer:
                return answer
        return Support.yes()

    return check


def never_raising(check: Callable[..., Support], reason: str = "{op}: could not check ({error})") -> Callable[..., Support]:
    """`check`, with an exception turned into a no (``{error}``: its type and message):
    support must never raise, and one odd node must not stop partitioning. `check` takes
    the node first; any further arguments (a support context) pass through."""

    def guarded(node: Node, *args: Any) -> Support:
        try:
            return check(node, *args)
        except Exception as exc:  # noqa: BLE001 - the reason says what went wrong
            return Support.no(reason.format(op=op_label(node), error=f"{type(exc).__name__}: {exc}"))

    return guarded
