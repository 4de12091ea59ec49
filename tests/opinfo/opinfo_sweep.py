"""torch's OpInfo database as edgeport's own test: each float32 op, as a one-op module,
exported to one backend and judged.

`op_cases` turns every OpInfo in ``op_db`` that runs in float32 on the CPU into a
module calling the op on its first tensor sample (non-tensor arguments become
constants, tensor arguments the module's inputs). `sweep_op` exports it to a backend
and gives a verdict:

- delegated: the backend took nodes, and the program equals eager within the
             backend's declared tolerance (`Backend.tolerance`);
- declined:  the backend took no node (each declined with its reason), or export
             refused the program with an `EdgeportError` (a clean, one-line error);
- crash:     export or the run raised anything else, or a partition the backend
             accepted failed to compile and fell back to portable torch;
- wrong:     the backend took nodes and its answer is off;
- fp16 range: off on a backend that computes in fp16 (`FP16_BACKENDS`), where a value
             the taken nodes compute from the sample is outside fp16's range: beyond
             65504 (e.g. a square of values near 800), or a whole value below
             fp16's smallest normal number, where it keeps fewer than 11 significant bits
             (soft_margin_loss's answer is 3e-7). The sample is outside what the backend
             declares it computes, not a lowering bug. Counted apart, never as right.

Ops torch.export cannot capture, and random ops (two eager calls differ, or the graph draws
random numbers), are skipped: they say nothing about a backend.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.utils._pytree as pytree
from torch import nn

import edgeport
from edgeport.backend import Backend, options_from_dict
from edgeport.testing import registry_for


class Verdict(str, enum.Enum):
    DELEGATED = "delegated"
    DECLINED = "declined"
    CRASH = "crash"
    WRONG = "wrong"
    FP16_RANGE = "fp16 range"


# Backends whose float ops compute in fp16 (QNN HTP): values beyond FP16_MAX saturate,
# and below FP16_TINY (the smallest normal number) lose significant bits.
FP16_BACKENDS = frozenset({"qualcomm"})
FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -14


@dataclass(frozen=True)
class Outcome:
    op: str
    backend: str
    verdict: Verdict
    detail: str = ""  # why: the error, the decline reasons, or the error against eager


class OneOp(nn.Module):
    """``op(sample.input, *sample.args, **sample.kwargs)`` with the sample's tensors as
    the module's inputs, in pytree order."""

    def __init__(self, op: Any, sample: Any):
        super().__init__()
        self.op = op
        self.leaves, self.spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
        self.positions = [i for i, leaf in enumerate(self.leaves) if isinstance(leaf, torch.Tensor)]

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.leaves[i] for i in self.positions)

    def forward(self, *tensors: torch.Tensor) -> Any:
        leaves = list(self.leaves)
        for i, tensor in zip(self.positions, tensors, strict=True):
            leaves[i] = tensor
        first, args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.op(first, *args, **kwargs)


@dataclass(frozen=True)
class OpCase:
    """One op ready to sweep: its module, inputs and eager answer."""

    name: str  # "op" or "op.variant", as OpInfo names its tests
    module: OneOp
    inputs: tuple[torch.Tensor, ...]
    expected: Any


def op_name(info: Any) -> str:
    return f"{info.name}.{info.variant_test_name}" if info.variant_test_name else info.name


def float32_opinfos() -> list[Any]:
    """Every OpInfo that runs in float32 on the CPU, in op_db's order."""
    from torch.testing._internal.common_methods_invocations import op_db

    return [info for info in op_db if torch.float32 in info.supported_dtypes("cpu")]


def op_cases(names: set[str] | None = None, reverse: bool = False) -> Iterator[OpCase | tuple[str, str]]:
    """An `OpCase` per float32 op (only those in ``names``, if given; last first if
    ``reverse``), or ``(name, why skipped)`` for one with no tensor sample, that
    torch.export cannot capture, or that is random."""
    infos = float32_opinfos()
    for info in reversed(infos) if reverse else infos:
        name = op_name(info)
        if names is not None and name not in names:
            continue
        yield op_case(info)


def op_case(info: Any) -> OpCase | tuple[str, str]:
    """``info``'s `OpCase`, or ``(name, why skipped)``."""
    name = op_name(info)
    try:
        return _case(info, name)
    except Exception as exc:  # a sample whose output we cannot even compare (a sparse tensor, ...)
        return name, f"its sample cannot be swept: {type(exc).__name__}: {_first_line(exc)[:100]}"


def _case(info: Any, name: str) -> OpCase | tuple[str, str]:
    torch.manual_seed(0)
    try:
        sample = next((s for s in info.sample_inputs("cpu", torch.float32, requires_grad=False)
                       if isinstance(s.input, torch.Tensor)), None)
    except Exception as exc:  # a sample generator that fails on this torch: nothing to sweep
        return name, f"sample_inputs raised {type(exc).__name__}"
    if sample is None:
        return name, "no sample with a tensor input"
    module = OneOp(info.op, sample).eval()
    inputs = module.example_inputs()
    try:
        with torch.no_grad():
            expected = module(*_copies(inputs))
            again = module(*_copies(inputs))
        exported = torch.export.export(module, _copies(inputs))
    except Exception as exc:
        return name, f"eager or torch.export raised {type(exc).__name__}"
    if relative_error(again, expected) != 0.0:
        return name, "random: two eager calls differ"
    if _draws_random_numbers(exported):  # OpInfo reseeds inside eager calls (bernoulli); export keeps no seed
        return name, "random: its graph draws random numbers"
    return OpCase(name, module, inputs, expected)


def _draws_random_numbers(exported: torch.export.ExportedProgram) -> bool:
    return any(isinstance(node.target, torch._ops.OpOverload)
               and torch.Tag.nondeterministic_seeded in node.target.tags for node in exported.graph.nodes)


def _copies(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Fresh copies, so an op that writes into its input leaves the sample as it was."""
    return tuple(t.clone() for t in inputs)


def relative_error(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max |expected| over every output; NaN and inf must sit
    at the same places with the same values; infinite when a dtype, shape or a non-tensor
    output differs."""
    got, want = pytree.tree_leaves(actual), pytree.tree_leaves(expected)
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for a, e in zip(got, want):
        if not isinstance(e, torch.Tensor):
            if isinstance(a, torch.Tensor) and a.numel() == 1:
                a = a.item()
            if a != e and not (a != a and e != e):  # NaN equals NaN here
                return float("inf")
            continue
        a = torch.as_tensor(a)
        if a.dtype != e.dtype or a.shape != e.shape:
            return float("inf")
        a, e = a.detach().double(), e.detach().double()
        special = ~torch.isfinite(e)
        if not torch.equal(torch.isnan(a), torch.isnan(e)) or not torch.equal(a[special & ~torch.isnan(e)],
                                                                                e[special & ~torch.isnan(e)]):
            return float("inf")
        finite = ~special
        if not finite.any():
            continue
        if not torch.isfinite(a[finite]).all():
            return float("inf")
        scale = max(float(e[finite].abs().max()), 1e-6)
        worst = max(worst, float((a[finite] - e[finite]).abs().max()) / scale)
    return worst


def sweep_op(case: OpCase, backend: Backend) -> Outcome:
    """Export ``case`` to ``backend`` alone, run it where it delegated, and judge it."""

    def outcome(verdict: Verdict, detail: str = "") -> Outcome:
        return Outcome(case.name, backend.name, verdict, detail)

    edgeport_log = logging.getLogger("edgeport")
    level = edgeport_log.level
    edgeport_log.setLevel(logging.ERROR)  # fallbacks are judged below, not logged
    try:
        program = edgeport.export(case.module, _copies(case.inputs), [backend.name], registry=registry_for(backend))
    except edgeport.EdgeportError as exc:
        return outcome(Verdict.DECLINED, f"export refused: {exc}")
    except Exception as exc:
        return outcome(Verdict.CRASH, f"export raised {type(exc).__name__}: {_first_line(exc)}")
    finally:  # left at ERROR, it hid every later test's edgeport warnings
        edgeport_log.setLevel(level)
    report = program.report()
    fallbacks = [p["fallback"] for p in report["partitions"] if p.get("fallback")]
    if fallbacks:
        return outcome(Verdict.CRASH, f"fell back: {fallbacks[0]}")
    taken = [n for n in report["nodes"] if n["backend"] == backend.name]
    if not taken:
        reasons = {n["op"]: n["reasons"].get(backend.name, "") for n in report["nodes"]}
        return outcome(Verdict.DECLINED, "; ".join(f"{op}: {why}" for op, why in reasons.items()) or "no compute node")
    try:
        with torch.no_grad():
            actual = program(*_copies(case.inputs))
    except Exception as exc:
        return outcome(Verdict.CRASH, f"run raised {type(exc).__name__}: {_first_line(exc)}")
    try:
        error = relative_error(actual, case.expected)
    except Exception as exc:
        return outcome(Verdict.CRASH, f"its output cannot be compared: {type(exc).__name__}: {_first_line(exc)}")
    tolerance = backend.tolerance(options_from_dict(backend, {}))
    if not error <= tolerance:
        detail = f"error {error:.3g} > {tolerance:g} ({len(taken)} nodes taken)"
        breach = fp16_range_breach(case, {n["name"] for n in taken}) if backend.name in FP16_BACKENDS else ""
        return outcome(Verdict.FP16_RANGE, f"{detail}; {breach}") if breach else outcome(Verdict.WRONG, detail)
    return outcome(Verdict.DELEGATED, f"error {error:.3g}")


def fp16_range_breach(case: OpCase, names: set[str]) -> str:
    """How a value eager computes at the nodes ``names`` of the decomposed graph (at
    every node, when the graph names none of them) leaves fp16's range; "" if none does."""
    largest = largest_values(case, names)
    if max(largest, default=0.0) > FP16_MAX:
        return f"the taken nodes compute |values| up to {max(largest):.3g}, beyond fp16's {FP16_MAX:g}"
    tiny = [v for v in largest if 0.0 < v < FP16_TINY]
    if tiny:
        return (f"a taken node computes a value whose largest |element| is {min(tiny):.3g}, below fp16's smallest "
                f"normal number {FP16_TINY:.3g}")
    return ""


def largest_values(case: OpCase, names: set[str]) -> list[float]:
    """The largest finite |element| of each float value eager computes at the nodes
    ``names`` of the decomposed graph (at every node, when the graph names none of
    them), from the case's inputs."""
    graph_module = torch.export.export(case.module, _copies(case.inputs)).run_decompositions().module()
    values: dict[str, float] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            result = super().run_node(node)
            for leaf in pytree.tree_leaves(result):
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.numel():
                    finite = leaf[torch.isfinite(leaf)]
                    if finite.numel():
                        values[node.name] = max(values.get(node.name, 0.0), float(finite.abs().max()))
            return result

    with torch.no_grad():
        Recorder(graph_module).run(*_copies(case.inputs))
    return [v for name, v in values.items() if name in names] or list(values.values())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
