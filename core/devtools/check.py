"""``edgeport check``: does each delegated partition compute what its torch program does?

The method's plan is walked on the given inputs with torch alone: portable steps run as
they are, delegated steps run their kept torch reference. So every partition sees its
true inputs, and an error in one partition never leaks into the next one's numbers.
Each delegated partition then runs on its backend with those same inputs, and its
outputs are compared with the reference's.

When a partition fails, the first op that diverges is found by bisection over prefixes
of the partition (in graph order, a prefix of a cycle-free partition is cycle-free):
each probe cuts the prefix out of the reference program, compiles and runs it with the
same backend and options, and compares every value the prefix hands on. The op that
ends the shortest diverging prefix is named with the source line that produced it. In a
quantized graph a drift can start in an op still within the allowance, so the quantized
values the named op reads are counted too, in their steps (`InputDrift`).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.fx import Node

from edgeport.partitioners.support import is_compute

from ..api import export
from ..arrays import initial_state
from ..backend import Backend, options_from_dict
from ..delegates import executable_of, load_step, run_label
from ..contract import checked_tolerance
from ..errors import BackendError, EdgeportError, InputError, UnknownBackendError
from ..manifest import MethodPlan, Step
from ..plugins import Registry, registry_or_default
from ..portable import PortableExecutable, stored_program
from ..quantize.node_dtypes import is_quantization_node
from ..program import Program
from ..report import op_name, source_of
from ..runtime import check_inputs
from ..subprogram import extract_subprogram
from ..support import DATA_MOVEMENT, DEQUANTIZE, qualified_name
from ..tensors import tensor_from_array
from .rounding import (MARGIN_DB, ONE_STEP, PEAK_FACTOR, SAMPLES, Nudge, dequantized_step, nudge_of, nudged_outputs,
                       output_nodes, rounds, values_of)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Error:
    """How far actual outputs are from expected ones. ``max_rel`` is relative to the
    largest expected magnitude (element-wise ratios explode near zero); ``snr_db`` is
    inf when they match exactly; ``max_steps`` counts the largest in steps of the
    outputs' quantization, when every output is a dequantized value (else None)."""

    max_abs: float
    max_rel: float
    snr_db: float
    max_steps: float | None = None

    def within(self, rtol: float) -> bool:
        return self.max_rel <= rtol  # False for nan


def compare(actual: Sequence[Any], expected: Sequence[torch.Tensor], steps: Sequence[float | None] = ()) -> Error:
    """Compare output lists, with the expected outputs' quantization ``steps`` if known;
    raises ValueError if their number, dtypes or shapes differ (a float64 output the
    runtime refuses would pass as a match, its values being right)."""
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} outputs, expected {len(expected)}")
    max_abs = max_rel = signal = noise = 0.0
    in_steps: list[float] = []
    for i, (a, e) in enumerate(zip(actual, expected)):
        a = torch.as_tensor(np.asarray(a) if isinstance(a, np.ndarray) else a).detach()
        if a.dtype != e.dtype:
            raise ValueError(f"output {i} is {str(a.dtype).removeprefix('torch.')}, "
                             f"expected {str(e.dtype).removeprefix('torch.')}")
        a, e = a.double(), e.detach().double()
        if a.shape != e.shape:
            raise ValueError(f"output {i} has shape {list(a.shape)}, expected {list(e.shape)}")
        if not e.numel():
            continue
        diff, scale, output_signal, output_noise = _difference(a, e)
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(scale, 1e-6))
        if i < len(steps) and steps[i]:
            in_steps.append(diff / steps[i])
        signal += output_signal
        noise += output_noise
    if noise == 0:
        snr = math.inf
    else:
        snr = 10 * math.log10(signal / noise) if signal > 0 and math.isfinite(noise) else -math.inf
    counted = len(steps) == len(expected) and len(in_steps) == len(expected)
    return Error(max_abs, max_rel, snr, max(in_steps, default=0.0) if counted else None)


def _difference(a: torch.Tensor, e: torch.Tensor) -> tuple[float, float, float, float]:
    """(largest |a - e|, the reference's largest finite magnitude, signal, noise) of one
    output. A NaN or infinity of the reference is matched only by the same value in
    ``a``, and any other mismatch of non-finite values is an infinite difference; the
    finite elements are compared as numbers. (Taken over the whole output, one NaN of the
    reference made the relative error NaN, which compared as "within tolerance": a
    wrong delegate passed whenever the input held a NaN.)"""
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    finite = torch.isfinite(a) & torch.isfinite(e)
    finite_reference = e[torch.isfinite(e)]
    scale = float(finite_reference.abs().max()) if finite_reference.numel() else 0.0
    signal = float((e[finite] ** 2).sum())
    if bool((~same & ~finite).any()):
        return math.inf, scale, signal, math.inf
    delta = (a - e)[finite]
    diff = float(delta.abs().max()) if delta.numel() else 0.0
    return diff, scale, signal, float((delta ** 2).sum())


def nan_values(actual: Sequence[Any], expected: Sequence[torch.Tensor]) -> int:
    """How many values ``actual`` holds as NaN where ``expected`` holds a number (outputs
    `compare` accepted): it scores them an infinite error, which reads as an overflow."""
    count = 0
    for a, e in zip(actual, expected):
        if e.is_floating_point():
            count += int((torch.as_tensor(np.asarray(a)).isnan() & ~e.isnan()).sum())
    return count


def discrete_differences(actual: Sequence[Any], expected: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(how many differ, how many there are) of the integer and bool output values (an
    argmax's indices, a comparison's flags): their relative error, an index difference
    over the largest index or a flag's flip as "max rel 1.00", says nothing of them."""
    differ = total = 0
    for a, e in zip(actual, expected):
        if not e.is_floating_point():
            differ += int((torch.as_tensor(np.asarray(a)) != e).sum())
            total += e.numel()
    return differ, total


def worst_of(errors: Iterable[Error]) -> Error:
    """The largest error of each kind among ``errors`` (the nudged runs' spread); in
    steps only where each of them is counted in steps."""
    errors = list(errors)
    steps = [e.max_steps for e in errors]
    return Error(max(e.max_abs for e in errors), max(e.max_rel for e in errors), min(e.snr_db for e in errors),
                 None if None in steps else max(steps))


def allowed(error: Error, rtol: float, spread: Error | None) -> bool:
    """Within ``rtol``; or, for a quantized partition, every output within one step of
    its quantization (`ONE_STEP`), or no more than `MARGIN_DB` noisier than its
    reference's own ``spread`` and no value further off than `PEAK_FACTOR` times the
    spread's largest (rounding.py)."""
    if error.within(rtol) or (error.max_steps is not None and error.max_steps <= ONE_STEP):
        return True
    return (spread is not None and error.snr_db >= spread.snr_db - MARGIN_DB
            and error.max_abs <= PEAK_FACTOR * spread.max_abs)


@dataclass(frozen=True)
class Candidate:
    """An op of a divergence range, and where in the model it comes from."""

    node: str
    module: str  # as `Divergence.module`
    source: str  # as `Divergence.source`


@dataclass(frozen=True)
class InputDrift:
    """How far a quantized value the diverging op reads was already off, as the backend
    computed the ops before it, in steps of its quantization. Those ops passed (within
    the allowance), yet a drift can start there and first exceed the allowance in this
    op: a kernel that rounds one way shows as a mean far from 0 (HTP's uint8 RmsNorm, which
    floors, was -0.4 step, and the linear after it was named)."""

    node: str  # the op that made it
    module: str  # as `Divergence.module`
    off: float  # the fraction of its elements a step or more off
    mean_steps: float  # the mean error, signed


@dataclass(frozen=True)
class Divergence:
    """The first op of a partition whose output no longer matches torch.

    ``exact`` is False when shorter prefixes could not be compiled alone: the
    divergence then lies somewhere in ``candidates``, the range's ops (its quantize and
    dequantize nodes left out), and this op is only the last of them.
    """

    node: str
    op: str
    source: str  # 'File "model.py", line 12, in forward'
    code: str  # the line itself
    module: str  # the innermost module that made it: "features.3.conv.1 (BatchNorm2d)", or ""
    error: Error
    compiles: int  # prefixes compiled to find it
    exact: bool = True
    candidates: tuple[Candidate, ...] = ()
    inputs: tuple[InputDrift, ...] = ()  # of an exact divergence in a quantized graph
    nan_values: int = 0  # as `PartitionCheck.nan_values`, in what the op's prefix hands on


@dataclass
class PartitionCheck:
    partition: int
    backend: str
    label: str  # how it ran here, as the runtime labels it: "cpu", "qualcomm: simulator"
    nodes: int
    rtol: float | None  # the backend's declared tolerance (or --rtol); None if the backend is not installed
    status: str  # "pass", "fail", "skipped" (cannot run here) or "error" (the backend raised)
    error: Error | None = None
    # a quantized partition: its reference against itself with each quantize's input
    # nudged by the backend's op_error and accumulator_error (rounding.py); close enough to it passes too
    spread: Error | None = None
    why: str = ""
    divergence: Divergence | None = None
    nan_values: int = 0  # outputs the backend gave as NaN where torch computed a number
    # (differing, all) of the integer and bool output values: `discrete_differences`
    discrete_values: tuple[int, int] = (0, 0)


@dataclass
class CheckReport:
    method: str
    partitions: list[PartitionCheck]
    # partition -> why it runs as portable torch though a backend took it: its compile
    # failed (nothing of it to check; torch runs it)
    fell_back: dict[int, str] = field(default_factory=dict)

    @property
    def checked(self) -> int:
        """How many partitions ran on their backend here (the others are skipped)."""
        return sum(1 for p in self.partitions if p.status != "skipped")

    @property
    def passed(self) -> bool:
        """No partition failed or raised, and at least one was checked when there are
        any: a program whose every backend cannot run here has not passed a check."""
        return all(p.status in ("pass", "skipped") for p in self.partitions) and (
            self.checked > 0 or not self.partitions)

    def to_json(self) -> dict[str, Any]:
        """JSON-able; non-finite numbers become the strings "inf", "-inf", "nan"."""
        return _finite(dataclasses.asdict(self) | {"checked": self.checked, "passed": self.passed})


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


# -- walking the plan --------------------------------------------------------------------


def check_program(program: Program, inputs: Sequence[Any], *, method: str | None = None, rtol: float | None = None,
                  locate: bool = True, registry: Registry | None = None,
                  progress: Progress | None = None) -> CheckReport:
    """Check every delegated partition of ``method`` on ``inputs``.

    ``rtol`` overrides the tolerance each backend declares for the options its
    partition was compiled with (`Backend.tolerance`); a quantized partition also
    passes within its rounding spread (`PartitionCheck.spread`, rounding.py);
    ``locate`` searches a failing partition for its first diverging op. The program
    must hold the torch reference of each delegated partition (export it with
    ``keep_reference=True``).
    """
    name = method or program.default_method
    plan = program.plan(name)
    require_references(plan, name)
    registry = registry_or_default(registry)
    partitions = program.report(name)["partitions"]
    sizes = {p["id"]: p["nodes"] for p in partitions}
    values = _start_values(program, plan, inputs)
    labels = input_labels(plan)
    delegated = sum(1 for s in plan.steps if s.kind == "delegate")
    results = []
    for step in plan.steps:
        args = [values[v] for v in step.inputs]
        reference = _torch_program(program, step.program or step.reference)
        require_ids_in_range(reference, args, [labels.get(v) for v in step.inputs])
        expected = [_tensor(v) for v in PortableExecutable(reference).run(args)]
        if step.kind == "delegate":
            if progress:
                progress(f"checking partition {len(results) + 1}/{delegated} on {step.backend}")
            results.append(_check_step(program, step, reference, args, expected, sizes.get(step.partition, 0),
                                       registry, rtol, locate, progress))
        values.update(zip(step.outputs, expected))
    return CheckReport(name, results, {p["id"]: p["fallback"] for p in partitions if p.get("fallback")})


def check_model(model: torch.nn.Module, example_inputs: tuple[Any, ...], backends: Sequence[str] = ("cpu",), *,
                inputs: Sequence[Any] | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                rtol: float | None = None, registry: Registry | None = None,
                progress: Progress | None = None) -> CheckReport:
    """Export ``model`` with its references kept, then `check_program` it on ``inputs``
    (default: the example inputs)."""
    program = export(model, example_inputs, backends, options=options, keep_reference=True, registry=registry,
                     progress=progress)
    return check_program(program, inputs if inputs is not None else example_inputs, rtol=rtol, registry=registry,
                         progress=progress)


def _start_values(program: Program, plan: MethodPlan, inputs: Sequence[Any]) -> dict[str, Any]:
    """The method's inputs and state by value name; the inputs checked as `Program.run`
    checks them (count, dtype, shape), so a wrong one is the InputError a run gives, not
    an error from deep inside a partition's torch program."""
    values: dict[str, Any] = dict(zip(plan.input_values, check_inputs(plan, inputs)))
    for value, fqn in plan.state_reads.items():
        entry = program.manifest.state[fqn]
        values[value] = tensor_from_array(initial_state(entry, program.files), entry)
    return values


def input_labels(plan: MethodPlan) -> dict[str, str]:
    """Each method input's value name -> how an error names it, as `Program.run` does: "input 0 ('ids')"."""
    return {value: f"input {i} ({spec.name!r})" for i, (value, spec) in enumerate(zip(plan.input_values, plan.inputs))}


def require_ids_in_range(reference: ExportedProgram, args: Sequence[Any], labels: Sequence[str | None]) -> None:
    """Refuse a method input that an embedding of ``reference`` reads ids from, holding
    an id its table has no row for (a token id past the vocabulary): torch's IndexError
    ("index out of range in self") read as a bug of edgeport's. ``labels`` name ``args``
    as `input_labels` does, None for a value computed inside the method."""
    placeholders = dict(zip(reference.graph_signature.user_inputs, zip(args, labels)))
    for node in reference.graph.nodes:
        if node.target is not torch.ops.aten.embedding.default or node.args[1].name not in placeholders:
            continue
        ids, label = placeholders[node.args[1].name]
        rows = node.args[0].meta["val"].shape[0]
        bad = ids[(ids < 0) | (ids >= rows)]
        if label is not None and bad.numel():
            raise InputError(f"{label} holds id {int(bad[0])}, but the embedding that reads it has rows for "
                             f"{rows} ids (0 to {rows - 1})", hint="give ids within that range (the model's vocabulary)")


def _tensor(value: Any) -> Any:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _torch_program(program: Program, prefix: str) -> ExportedProgram:
    return stored_program(program.files, prefix)


def require_references(plan: MethodPlan, name: str) -> None:
    """Refuse a method whose delegated partitions were saved without their torch
    reference: there is nothing to check them against."""
    missing = [s.partition for s in plan.steps if s.kind == "delegate" and not s.reference]
    if missing:
        raise EdgeportError(
            f"partition(s) {', '.join(map(str, missing))} of {name!r} were saved without their torch reference, "
            "so there is nothing to check them against",
            hint="re-export with --keep-reference (edgeport.export(..., keep_reference=True))",
        )


def _check_step(program: Program, step: Step, reference: ExportedProgram, args: list[Any], expected: list[Any],
                nodes: int, registry: Registry, rtol: float | None, locate: bool,
                progress: Progress | None) -> PartitionCheck:
    result = PartitionCheck(step.partition, step.backend, step.backend, nodes, rtol, "skipped")
    try:
        entry = registry.entry(step.backend)
    except UnknownBackendError as exc:
        result.why = str(exc) if exc.disabled else f"backend {step.backend!r} is not installed ({exc})"
        return result
    backend, availability = entry.backend, entry.availability()
    result.label = run_label(step.backend, availability)
    try:
        options = options_from_dict(backend, program.manifest.artifacts[step.artifact].options)
        if rtol is None:
            result.rtol = checked_tolerance(backend, options)
        nudge = nudge_of(backend, options)
    except BackendError as exc:  # its tolerance, named as the kit names it: 1.0 passed an answer of zeros
        result.status, result.why = "error", f"{step.backend}'s {exc}"
        return result
    except Exception as exc:  # a plugin's bug is what check is for: report, go on
        result.status, result.why = "error", f"{type(exc).__name__}: {exc}"
        return result
    if not availability.can_run:
        result.why = availability.why or f"{step.backend} cannot run on this machine"
        return result
    try:
        loaded = load_step(program.manifest, program.files, step, backend)
        steps = [dequantized_step(node) for node in output_nodes(reference)]
        outputs = executable_of(loaded, step).run(args)
        result.error = compare(outputs, expected, steps)
        result.nan_values = nan_values(outputs, expected)
        result.discrete_values = discrete_differences(outputs, expected)
    except Exception as exc:  # a backend that crashes here is what check is for: report, go on
        result.status, result.why = "error", f"{type(exc).__name__}: {exc}"
        return result
    if rounds(reference):
        result.spread = worst_of(compare(nudged_outputs(reference, args, nudge, seed), expected, steps)
                                 for seed in range(SAMPLES))
    result.status = "pass" if allowed(result.error, result.rtol, result.spread) else "fail"
    if result.status == "fail" and locate:
        result.divergence = locate_divergence(reference, args, backend, options, result.rtol, step.partition,
                                              progress, nudge=nudge)
        if result.divergence is None:
            result.why = "re-compiled from its torch program the partition matches: the divergence did not reproduce"
    return result


# -- finding the first diverging op ------------------------------------------------------


def _groups(reference: ExportedProgram) -> list[list[Node]]:
    """Compute nodes in graph order, each first in its group with what belongs to it, so
    a prefix never ends on half an op: the getitems unpacking it and, in a quantized
    graph, the quantize and dequantize after it (a prefix hands on the dequantized value,
    as a partition boundary does) and the dequantize of a weight or the quantize of an
    input it reads (which stand at the top of the graph, where a prefix would hand them
    on unread: a backend lowering quantized patterns refuses that)."""
    groups: list[list[Node]] = []
    group_of: dict[Node, int] = {}
    waiting: dict[Node, None] = {}  # quantization nodes reading no grouped value (yet)
    for node in reference.graph.nodes:
        if node.op != "call_function":
            continue
        if is_compute(node) and not is_quantization_node(node):
            group_of[node] = len(groups)
            groups.append([node, *_read_from(node, waiting)])
            continue
        producers = [group_of[arg] for arg in node.all_input_nodes if arg in group_of]
        if producers:  # a getitem, or a quantize or dequantize of a value
            group_of[node] = max(producers)
            groups[group_of[node]].append(node)
        else:
            waiting[node] = None
    if waiting:  # e.g. an input's quantize and dequantize handed straight on
        groups.append(list(waiting))
    return groups


def _read_from(node: Node, waiting: dict[Node, None]) -> list[Node]:
    """The waiting nodes ``node`` reads, with those they read and those reading them (an
    input's quantize, and its every dequantize); taken out of ``waiting``."""
    read, stack = [], list(node.all_input_nodes)
    while stack:
        arg = stack.pop()
        if arg in waiting:
            del waiting[arg]
            read.append(arg)
            stack.extend([*arg.all_input_nodes, *arg.users])
    return read


def _code(node: Node) -> str:
    """The source line under the frame `source_of` names."""
    lines = [line.strip() for line in (node.meta.get("stack_trace") or "").splitlines()]
    frame = source_of(node)
    after = lines.index(frame) + 1 if frame in lines else len(lines)
    return lines[after] if after < len(lines) and not lines[after].startswith("File ") else ""


def _module(node: Node) -> str:
    """Where in the model the node comes from, as the innermost module's path: the
    source line alone says little when it is ``x = self.features(x)``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, kind = list(stack.values())[-1]
    name = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1])
    return f"{path} ({name})" if path else ""


def locate_divergence(reference: ExportedProgram, args: Sequence[Any], backend: Backend, options: Any, rtol: float,
                      partition: int = 0, progress: Progress | None = None, *,
                      nudge: Nudge = Nudge()) -> Divergence | None:
    """The first op of ``reference`` (a partition's torch program) whose prefix, compiled
    by ``backend``, no longer matches torch on ``args``; None if even the whole
    partition re-compiled matches. A quantized prefix is also allowed the spread of its
    own outputs with every rounding's input nudged by up to ``nudge`` (`allowed`)."""
    env = values_of(reference, args)
    nudged = [values_of(reference, args, nudge, seed) for seed in range(SAMPLES)] if any(nudge) and rounds(reference) else None
    groups = _groups(reference)
    order = {node: i for i, node in enumerate(reference.graph.nodes)}
    by_name = {node.name: node for node in reference.graph.nodes}
    compiles = 0
    nans: dict[int, int] = {}  # prefix -> NaN values its outputs hold where torch's do not

    def run_prefix(k: int) -> tuple[list[str], Sequence[Any]] | None:
        """The values the prefix ending with group ``k`` hands on and the backend's
        outputs for them; None if the prefix does not compile."""
        nonlocal compiles
        compiles += 1
        if progress:
            progress(f"partition {partition}: bisecting, compile {compiles} (first {k + 1}/{len(groups)} ops)")
        sub = extract_subprogram(reference, sorted((n for g in groups[: k + 1] for n in g), key=order.__getitem__))
        try:
            artifact = dataclasses.replace(backend.compile(sub.program, options), options=options)
            return list(sub.outputs), backend.load(artifact).run([env[v] for v in sub.inputs])
        except Exception:  # e.g. a backend that will not take a lone reshape: try a longer prefix
            return None

    def probe(k: int) -> tuple[Error, bool] | None:
        """The error of the prefix ending with group ``k`` and whether it is allowed."""
        ran = run_prefix(k)
        if ran is None:
            return None
        values, outputs = ran
        expected = [env[v] for v in values]
        error = compare(outputs, expected, [dequantized_step(by_name[v]) for v in values])
        nans[k] = nan_values(outputs, expected)
        spread = worst_of(compare([n[v] for v in values], expected) for n in nudged) if nudged is not None else None
        return error, allowed(error, rtol, spread)

    hi = len(groups) - 1
    whole = probe(hi)
    if whole is None or whole[1]:
        return None
    worst = whole[0]
    lo = 0  # invariant: prefix hi diverges; no prefix shorter than lo does
    while lo < hi:
        mid = (lo + hi) // 2
        probed = None
        while mid < hi and (probed := probe(mid)) is None:
            mid += 1
        if probed is None:
            break  # prefixes lo..hi-1 do not compile alone
        if probed[1]:
            lo = mid + 1
        else:
            hi, worst = mid, probed[0]
    node = groups[hi][0]
    candidates = () if lo == hi else _candidates([g[0] for g in groups[lo: hi + 1]])
    drift = ()
    if lo == hi and hi > 0 and nudged is not None and (ran := run_prefix(hi - 1)) is not None:
        drift = _input_drift(node, dict(zip(*ran)), env)
    return Divergence(node.name, op_name(node), source_of(node), _code(node), _module(node), worst, compiles,
                      lo == hi, candidates, drift, nans.get(hi, 0))


def _input_drift(node: Node, computed: Mapping[str, Any], env: Mapping[str, Any]) -> tuple[InputDrift, ...]:
    """The drift of each per-tensor quantized value ``node`` reads among the ``computed``
    ones (a prefix's outputs as the backend computed them)."""
    drifts = []
    for value in node.all_input_nodes:
        step = value.args[1] if qualified_name(value) == DEQUANTIZE else None
        if value.name not in computed or not isinstance(step, float):
            continue
        steps = (torch.as_tensor(np.asarray(computed[value.name])).double() - env[value.name].double()) / step
        maker = _made_by(value)
        drifts.append(InputDrift(maker.name, _module(maker), float((steps.abs() >= 0.5).double().mean()),
                                 float(steps.mean())))
    return tuple(drifts)


def _made_by(value: Node) -> Node:
    """The op that computed a dequantized value: back through its quantize and dequantize
    and any data movement (a view, a copy: the same values) after that op, to the op a
    getitem unpacks."""
    while value.all_input_nodes and (is_quantization_node(value) or op_name(value) in DATA_MOVEMENT
                                     or value.target is operator.getitem):
        value = value.all_input_nodes[0]
    return value


def _candidates(nodes: list[Node]) -> tuple[Candidate, ...]:
    """The ops of a range a divergence lies in; a range of only quantize and
    dequantize nodes is given whole."""
    ops = [n for n in nodes if not is_quantization_node(n)] or nodes
    return tuple(Candidate(n.name, _module(n), source_of(n)) for n in ops)
