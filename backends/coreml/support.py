"""Which nodes Core ML takes: asked of coremltools' own torch op registry.

coremltools converts an ExportedProgram node by node. For each ``call_function`` node
its torch frontend takes the op's name (``aten::convolution``, or ``getitem`` for
`operator.getitem`), normalises it with its `sanitize_op_kind` (lower case, no
``aten::`` prefix, no ``.default``/``.Tensor``/``.Scalar`` suffix) and looks the
result up in ``_TORCH_OPS_REGISTRY``. `check_node` makes exactly that lookup, so a
"yes" here means coremltools has a converter, and a "no" names what it looked for.

On top of the registry: dtypes Core ML has no tensors for, symbolic shapes, and
`KNOWN_BAD`, conversions coremltools accepts but gets wrong (each one shown by a
test in tests/backends/coreml/test_coreml_known_bad.py, which fails once coremltools fixes
it, so the entry can go).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.fx import Node

import edgeport
from edgeport import support

from . import toolchain

aten = torch.ops.aten

# Ops the default decompositions would split up but coremltools converts whole, into
# fewer or fused MIL ops (MIL op counts, coremltools 9.0, iOS17; test_coreml_keep_ops.py
# checks each one still converts into fewer ops than its decomposition).
KEEP_OPS = frozenset(
    {
        aten.scaled_dot_product_attention.default,  # ~6 ops instead of ~25; one fused op from iOS18
        aten.instance_norm.default,  # MIL instance_norm instead of mean/sub/mul/mean/add/sqrt/div
        aten.linear.default,  # MIL linear, without the reshapes around addmm
        aten.matmul.default,  # one broadcasting MIL matmul, without the reshapes around bmm/mm
        aten.pixel_shuffle.default,  # MIL pixel_shuffle instead of reshape/transpose/reshape
        aten.hardswish.default,  # MIL sigmoid_hard instead of add/clamp/clamp/mul/div
        aten.hardsigmoid.default,  # MIL sigmoid_hard instead of add/clamp/clamp/div
        aten.softplus.default,  # MIL softplus instead of exp/log1p/gt/where
        aten.mish.default,  # MIL softplus/tanh/mul instead of exp/log1p/gt/where/tanh/mul
        aten.prelu.default,  # MIL prelu instead of gt/mul/where
        aten.pad.default,  # MIL pad instead of arange/abs/index gathers (reflect, replicate)
    }
)


# -- what coremltools looks up --------------------------------------------------------


def op_name(target: Any) -> str:
    """The name coremltools' torch frontend starts from (as its `from_exir_node` does)."""
    try:
        return target.name()  # OpOverload: "aten::convolution", "aten::mean.dim"
    except AttributeError:
        return target.__name__ if callable(target) else str(target)  # operator.getitem: "getitem"


class ConverterRegistry:
    """coremltools' torch op registry, looked up with coremltools' own name normalisation."""

    def __init__(self) -> None:
        toolchain.coremltools()  # imports coremltools quietly, or says how to install it
        from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
        from coremltools.converters.mil.frontend.torch.utils import TORCH_DTYPE_TO_MIL_DTYPE, sanitize_op_kind

        # name_to_func_mapping, not `in`: the registry's __contains__ warns it is deprecated.
        self._converters = _TORCH_OPS_REGISTRY.name_to_func_mapping
        self._sanitize = sanitize_op_kind
        # Torch dtypes with a Core ML tensor type of the same kind. float64 is left out:
        # coremltools would silently compute it in float32.
        self.dtypes = frozenset(TORCH_DTYPE_TO_MIL_DTYPE) - {torch.float64}
        self.check_tensors = support.all_of(
            support.decline_if_symbolic("{op} has a symbolic shape {shape}; edgeport converts Core ML partitions "
                                        "with static shapes (no RangeDim inputs yet)"),
            support.decline_if_dtype_not_in(self._node_dtypes, "{op} uses torch.{dtype}, which Core ML has no tensors of"),
        )

    def _node_dtypes(self, node: Node) -> frozenset[torch.dtype]:
        """Core ML's tensor dtypes, and int8 for a static per-tensor (de)quantize."""
        return self.dtypes | {torch.int8} if _static_quantization(node) else self.dtypes

    def key(self, target: Any) -> str:
        """The key coremltools looks ``target`` up under: "convolution", "mean.dim", ..."""
        return self._sanitize(op_name(target))

    def has_converter(self, target: Any) -> bool:
        return self.key(target) in self._converters

    def copy_twin(self, target: Any) -> torch._ops.OpOverload | None:
        """The ``_copy`` op to hand coremltools instead of ``target``, if it needs one.

        coremltools registers some view ops only under the functional ``_copy`` names of
        ExecuTorch's edge dialect: it converts ``alias_copy`` but not the ``alias`` that
        torch.export leaves (e.g. for ``mask[:T, :T]`` with T the full length).
        """
        if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten" or self.has_converter(target):
            return None
        name, overload = target.__name__.rsplit(".", 1)  # "alias.default"
        twin = getattr(getattr(torch.ops.aten, f"{name}_copy", None), overload, None)
        return twin if twin is not None and self.has_converter(twin) else None


# -- conversions coremltools gets wrong -------------------------------------------------


def _integer_output(node: Node) -> bool:
    dtype = support.output_dtype(node)
    return dtype is not None and not dtype.is_floating_point and dtype is not torch.bool


def _integer_with_open_bound(node: Node) -> bool:
    bounds = [node.args[i] if len(node.args) > i else node.kwargs.get(k) for i, k in ((1, "min"), (2, "max"))]
    return _integer_output(node) and None in bounds


def _bool_input(node: Node) -> bool:
    first = node.args[0] if node.args else None
    return isinstance(first, Node) and support.output_dtype(first) is torch.bool


def _integer_bounds_on_floats(node: Node) -> bool:
    bounds = node.args[1:3]
    integer = any(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
    dtype = support.output_dtype(node)
    return integer and dtype is not None and dtype.is_floating_point


def _circular_pad(node: Node) -> bool:
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    return mode == "circular"


def _grouped_query(node: Node) -> bool:
    return bool(node.kwargs.get("enable_gqa", False))


def _no_eps(node: Node) -> bool:
    eps = node.args[3] if len(node.args) > 3 else node.kwargs.get("eps")
    return eps is None


_FP16_EXACT = "computed in fp16 by default, exact only up to 2048"


@dataclass(frozen=True)
class KnownBad:
    """A conversion coremltools accepts but gets wrong, found by our tests."""

    ops: frozenset[torch._ops.OpOverload]
    applies: Callable[[Node], bool]
    reason: str


KNOWN_BAD: tuple[KnownBad, ...] = (
    KnownBad(
        frozenset({aten.div.Tensor_mode}),
        _integer_output,
        "coremltools 9.0 divides integers with a rounding mode in floating point and returns floats "
        f"({_FP16_EXACT})",
    ),
    KnownBad(
        frozenset({aten.clamp.default, aten.clamp.Tensor}),
        _integer_with_open_bound,
        "coremltools 9.0 stands in float32's largest value for a missing bound, so clamping integers "
        f"returns floats ({_FP16_EXACT})",
    ),
    KnownBad(
        frozenset({aten.full.default}),
        _integer_output,
        f"coremltools 9.0 fills an integer tensor with floats, so the math using it turns float ({_FP16_EXACT})",
    ),
    KnownBad(
        frozenset({aten.sum.dim_IntList, aten.sum.default}),
        _bool_input,
        f"coremltools 9.0 counts booleans in floating point and returns floats ({_FP16_EXACT})",
    ),
    KnownBad(
        frozenset({aten.hardtanh.default}),
        _integer_bounds_on_floats,
        "coremltools 9.0 cannot convert hardtanh with integer bounds on a float tensor, as F.relu6 "
        "exports it (its clip needs bounds of the tensor's dtype)",
    ),
    KnownBad(
        frozenset({aten.pad.default}),
        _circular_pad,
        "coremltools 9.0 pads only in constant, reflect and replicate modes, not circular",
    ),
    KnownBad(
        frozenset({aten.scaled_dot_product_attention.default}),
        _grouped_query,
        "coremltools 9.0 cannot convert scaled_dot_product_attention with enable_gqa "
        "(fewer key/value heads than query heads)",
    ),
    KnownBad(
        frozenset({aten.rms_norm.default}),
        _no_eps,
        "coremltools 9.0 converts rms_norm only with an explicit eps",
    ),
)


def known_bad(node: Node) -> KnownBad | None:
    for entry in KNOWN_BAD:
        if node.target in entry.ops and entry.applies(node):
            return entry
    return None


# -- the check ----------------------------------------------------------------------------


# Static per-tensor quantization (a PT2E graph's activations): coremltools converts it to
# MIL quantize/dequantize (iOS17), whose quantized tensors are int8.
STATIC_QUANTIZATION = frozenset({support.QUANTIZE, support.DEQUANTIZE})


def _static_quantization(node: Node) -> bool:
    """A per-tensor quantize or dequantize with literal scale and zero point."""
    return op_name(node.target) in STATIC_QUANTIZATION and getattr(node.target, "_overloadname", "") == "default"


def check_node(registry: ConverterRegistry, node: Node) -> edgeport.Support:
    """Whether coremltools converts ``node`` correctly; the reason when it does not."""
    if node.op in ("placeholder", "output"):
        return edgeport.Support.yes()  # coremltools takes inputs, parameters and outputs as they are
    if node.op != "call_function":
        return edgeport.Support.no(f"coremltools converts only call_function nodes, not {node.op} {node.name}")
    name = str(node.target)
    tensors = registry.check_tensors(node)
    if not tensors:
        return tensors
    if not registry.has_converter(node.target) and registry.copy_twin(node.target) is None:
        return edgeport.Support.no(
            f"coremltools has no converter for {name} (looked up as '{registry.key(node.target)}')"
        )
    source = node.args[0] if node.target is operator.getitem else None
    if isinstance(source, Node) and source.op == "call_function" and not check_node(registry, source):
        return edgeport.Support.no(f"{node.name} picks an output of {source.name}, which coremltools does not take")
    entry = known_bad(node)
    if entry is not None:
        return edgeport.Support.no(f"{name}: {entry.reason}")
    return edgeport.Support.yes()
