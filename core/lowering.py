"""Lowering one method: propose partitions, compile them, assemble the plan.

- propose: ask every backend about every node (the support matrix), then partition;
- compile: each delegated partition not compiled yet, to a typed outcome (outcomes.py).
  When a toolchain refuses particular nodes (`DeclineNodes`), those become "no" answers
  of that backend and the method is proposed again; partitions compiled before are
  reused, not compiled twice. A compile that raises refuses all its nodes so, when
  another selected backend supports any of them: one broken compile costs its backend
  those nodes, not the others their chance. Otherwise the partition falls back to
  portable torch with the reason in the report. (``strict`` raises instead of either.)
- assemble: the steps, files and artifacts of the method, its plan and its report.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from edgeport.partitioners.grow import Partition
from edgeport.partitioners.partition import PartitionPlan, partition_graph
from edgeport.partitioners.policy import PORTABLE
from edgeport.partitioners.support import SupportMatrix, ask_support, is_compute

from .backend import Artifact, Backend, Support, options_to_dict, support_question
from .contract import artifact_problem
from .errors import DeclineNodes, EdgeportError, LoweringError, a_type
from .manifest import ArtifactInfo, MethodPlan, RowUpdate, StatePrefix, Step, TensorSpec
from .outcomes import Compiled, DeclinedNodes, FellBack, Outcome, PartitionKey, Placement, partition_key
from .output_tree import dump_structure
from .portable import program_to_files
from .report import placement_report
from .state_rows import split_row_updates, split_state_prefixes
from .subprogram import Subprogram, extract_subprogram
from .tensors import dtype_name

log = logging.getLogger("edgeport.lowering")

MAX_REPARTITIONS = 32  # each round declines at least one node; this only bounds a buggy backend
Progress = Callable[[str], None]
IOSpecs = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]  # the method's inputs, outputs


@dataclass(frozen=True)
class LoweredMethod:
    plan: MethodPlan
    files: dict[str, bytes]  # path in the program file -> bytes
    artifacts: dict[str, ArtifactInfo]
    report: dict[str, Any]


@dataclass(frozen=True)
class LoweringSettings:
    """How to lower: the same for every method of an export, except ``declined``."""

    strict: bool = False  # a failed compile raises instead of declining its nodes or falling back
    keep_reference: Callable[[str], bool] = lambda backend: False  # store a backend's partitions' torch program too
    progress: Progress | None = None
    # backend -> the reason it declines every node (a backend that does not offer the
    # quantization scheme asked for)
    declined: Mapping[str, str] = field(default_factory=dict)


class _Cutter:
    """Cuts each partition out of the program once, however often it is asked for."""

    def __init__(self, program: ExportedProgram) -> None:
        self.program = program
        self._cache: dict[tuple[str, ...], Subprogram] = {}

    def __call__(self, partition: Partition) -> Subprogram:
        key = tuple(n.name for n in partition.nodes)
        if key not in self._cache:
            self._cache[key] = extract_subprogram(self.program, partition.nodes)
        return self._cache[key]


@dataclass
class _Method:
    """The method being lowered, and what every step of lowering it needs."""

    name: str
    program: ExportedProgram
    backends: Mapping[str, Backend]
    options: Mapping[str, Any]  # backend name -> its options instance
    settings: LoweringSettings
    cut: _Cutter = field(init=False)

    def __post_init__(self) -> None:
        self.cut = _Cutter(self.program)


def lower_method(
    name: str,
    program: ExportedProgram,
    backends: Mapping[str, Backend],
    options: Mapping[str, Any],
    settings: LoweringSettings = LoweringSettings(),
) -> LoweredMethod:
    """Lower method ``name`` onto ``backends`` (in priority order), each with its
    options instance in ``options``."""
    if program.graph_signature.user_inputs_to_mutate:
        mutated = ", ".join(program.graph_signature.user_inputs_to_mutate.values())
        raise EdgeportError(
            f"method {name!r} mutates its input(s) {mutated} in place",
            hint="return the new value instead, or keep it in a registered buffer (program state)",
        )
    row_updates = split_row_updates(program)
    prefixes = split_state_prefixes(program)
    method = _Method(name, program, backends, options, settings)
    nodes = list(program.graph.nodes)
    # Read the I/O specs before any backend looks at the graph: a support check that
    # calls int() on a symbolic size would specialize that dim for good.
    io = _io_specs(program, nodes)
    placement = place(method, nodes)
    return _with_state_rows(assemble(method, placement, io), row_updates, prefixes)


# -- propose and compile ---------------------------------------------------------------------


def place(method: _Method, nodes: list[Node]) -> Placement:
    """Propose partitions and compile them, again after each round of declined nodes."""
    matrix = ask_support(nodes, {b: _support_fn(method, b) for b in method.backends})
    for backend, fault in matrix.faults.items():  # one line per backend, as a failed compile gets
        log.warning("backend %s: %s; its nodes go to the other backends", backend, fault)
    outcomes: dict[PartitionKey, Outcome] = {}
    for _ in range(MAX_REPARTITIONS):
        plan = propose(method, nodes, matrix)
        declined = compile_plan(method, plan, matrix, outcomes)
        if declined is None:
            return Placement(nodes, matrix, plan, outcomes)
        for node, reason in declined.reasons.items():
            matrix.decline(node, declined.backend, reason)
    raise LoweringError(f"method {method.name!r}: backends kept refusing nodes after {MAX_REPARTITIONS} rounds")


def _support_fn(method: _Method, backend: str) -> Callable[[Node], Support]:
    reason = method.settings.declined.get(backend)
    if reason:
        no = Support.no(reason)
        return lambda node: no
    return support_question(method.backends[backend], method.program, method.options[backend])


def propose(method: _Method, nodes: list[Node], matrix: SupportMatrix) -> PartitionPlan:
    rules = {b: backend.rules for b, backend in method.backends.items()}
    return partition_graph(nodes, matrix, list(method.backends), rules)


def compile_plan(method: _Method, plan: PartitionPlan, matrix: SupportMatrix,
                 outcomes: dict[PartitionKey, Outcome]) -> DeclinedNodes | None:
    """Compile every delegated partition not compiled yet into ``outcomes``; the first
    nodes a toolchain declines, or a failed compile another backend can share, as
    declined nodes (the caller proposes again); or None."""
    delegated = [p for p in plan.partitions if p.backend != PORTABLE]
    for i, partition in enumerate(delegated):
        key = partition_key(partition)
        if key in outcomes:
            continue
        if method.settings.progress:
            method.settings.progress(f"{method.name}: compiling partition {i + 1}/{len(delegated)} on "
                                     f"{partition.backend} ({len(partition.nodes)} nodes)")
        outcome = compile_partition(method, partition)
        if isinstance(outcome, FellBack):
            outcome = _elsewhere(partition, outcome, matrix)
        if isinstance(outcome, DeclinedNodes):
            return outcome
        outcomes[key] = outcome
    return None


def compile_partition(method: _Method, partition: Partition) -> Outcome:
    backend = method.backends[partition.backend]
    # A cut of its own, not the cached one the portable fallback and the kept reference are
    # made of: a compile that changes its program in place (an fx pass) and then fails must
    # not change what runs in its place. Weights are shared, not copied (~7 ms a ResNet-18).
    program = extract_subprogram(method.program, partition.nodes).program
    start = time.perf_counter()
    try:
        artifact = backend.compile(program, method.options[partition.backend])
        problem = artifact_problem(artifact)
        if problem:
            raise TypeError(f"compile() {problem}")
        return Compiled(artifact, time.perf_counter() - start)
    except DeclineNodes as declined:
        return _declined(partition, declined)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"compile failed: {type(exc).__name__}: {first}"
        if method.settings.strict:
            nodes = sum(1 for n in partition.nodes if is_compute(n))  # as the placement table counts them
            raise LoweringError(
                f"method {method.name!r}, partition {partition.id} ({nodes} nodes) on "
                f"{partition.backend!r}: {reason}",
                hint="drop --strict to hand its nodes to the next selected backend that supports them, else to "
                     "portable torch",
            ) from exc
        return FellBack(partition.backend, reason, time.perf_counter() - start)


def _elsewhere(partition: Partition, failed: FellBack, matrix: SupportMatrix) -> FellBack | DeclinedNodes:
    """A failed compile as its backend declining every node of the partition, when
    another backend supports one of them; else the fallback to portable torch."""
    names = [n.name for n in partition.nodes if n.name in matrix.answers]
    others = [b for b in matrix.backends if b != partition.backend]
    if any(matrix.supports(name, b) for name in names for b in others):
        log.warning("partition %d on %s: %s; its nodes go to the other backends",
                    partition.id, partition.backend, failed.reason)
        return DeclinedNodes(partition.backend, dict.fromkeys(names, failed.reason))
    log.warning("partition %d on %s falls back to portable: %s", partition.id, partition.backend, failed.reason)
    return failed


def _declined(partition: Partition, declined: DeclineNodes) -> DeclinedNodes | FellBack:
    """The nodes a toolchain refused, named by the nodes that run (a getitem runs
    wherever its producer runs); a refusal of nodes it was not given is a failed compile."""
    known = {n.name: n for n in partition.nodes}
    unknown = set(declined.reasons) - known.keys()
    if not declined.reasons:
        return FellBack(partition.backend, "compile raised DeclineNodes naming no node (name the nodes your "
                                           "toolchain refused, or raise another error)")
    if unknown:
        return FellBack(partition.backend, f"compile declined nodes the partition does not hold: "
                                           f"{', '.join(sorted(unknown))} (name them as the partition's graph does)")
    reasons = {}
    for name, reason in declined.reasons.items():
        node = known[name]
        if node.target is operator.getitem:
            node = node.args[0]
        reasons[node.name] = reason
    return DeclinedNodes(partition.backend, reasons)


# -- assemble ----------------------------------------------------------------------------------


@dataclass
class _Assembled:
    """The steps of a method, and the files and artifacts they read."""

    steps: list[Step] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    artifacts: dict[str, ArtifactInfo] = field(default_factory=dict)


def assemble(method: _Method, placement: Placement, io: IOSpecs) -> LoweredMethod:
    """Turn compiled partitions into steps and files, then the method's plan and report."""
    out = _Assembled()
    for partition in placement.plan.partitions:
        sub = method.cut(partition)
        if not sub.outputs:  # assertions on constants alone: nothing can differ at run time
            continue
        outcome = placement.outcome(partition)
        if isinstance(outcome, Compiled):
            _add_delegate(method, out, partition, outcome.artifact)
        else:
            prefix = f"portable/{method.name}/{partition.id}"
            _add_program_files(out.files, prefix, sub.program)
            out.steps.append(Step("portable", partition.id, sub.inputs, sub.outputs, program=prefix))
    subprograms = {p.id: method.cut(p) for p in placement.plan.partitions}
    report = placement_report(placement, subprograms, out.steps)
    return LoweredMethod(_method_plan(method, io, out.steps), out.files, out.artifacts, report)


def _add_delegate(method: _Method, out: _Assembled, partition: Partition, artifact: Artifact) -> None:
    stem = f"{method.name}/{partition.id}"
    path = f"artifacts/{stem}{artifact.suffix}"
    out.files[path] = artifact.data
    out.artifacts[path] = ArtifactInfo(partition.backend, method.backends[partition.backend].version,
                                       options_to_dict(method.options[partition.backend]), dict(artifact.metadata))
    sub = method.cut(partition)
    reference = f"reference/{stem}" if method.settings.keep_reference(partition.backend) else None
    if reference:
        _add_program_files(out.files, reference, sub.program)
    out.steps.append(Step("delegate", partition.id, sub.inputs, sub.outputs, backend=partition.backend,
                          artifact=path, reference=reference))


def _with_state_rows(lowered: LoweredMethod, updates: tuple[RowUpdate, ...],
                     prefixes: tuple[StatePrefix, ...]) -> LoweredMethod:
    """The plan writes these states row by row, not whole, and reads these as prefixes."""
    if not updates and not prefixes:
        return lowered
    rows = {u.rows for u in updates}
    writes = {value: fqn for value, fqn in lowered.plan.state_writes.items() if value not in rows}
    plan = dataclasses.replace(lowered.plan, state_writes=writes, row_updates=updates, state_prefixes=prefixes)
    return dataclasses.replace(lowered, plan=plan)


def _io_specs(program: ExportedProgram, nodes: list[Node]) -> IOSpecs:
    signature = program.graph_signature
    by_name = {n.name: n for n in nodes}
    inputs = tuple(_tensor_spec(by_name[n]) for n in signature.user_inputs)
    outputs = tuple(_tensor_spec(_output_node(o, by_name)) for o in signature.user_outputs)
    return inputs, outputs


def _method_plan(method: _Method, io: IOSpecs, steps: list[Step]) -> MethodPlan:
    program = method.program
    signature = program.graph_signature
    mutated = signature.buffers_to_mutate  # output node name -> buffer fqn
    inputs, outputs = io
    return MethodPlan(
        name=method.name,
        inputs=inputs,
        outputs=outputs,
        input_values=tuple(signature.user_inputs),
        output_values=tuple(s.name for s in outputs),
        steps=tuple(steps),
        state_reads={arg: fqn for arg, fqn in signature.inputs_to_buffers.items() if fqn in mutated.values()},
        state_writes=dict(mutated),
        symbols=_symbols(program),
        out_spec=dump_structure(program.call_spec.out_spec),
    )


def _add_program_files(files: dict[str, bytes], prefix: str, program: ExportedProgram) -> None:
    for rel, data in program_to_files(program).items():
        files[f"{prefix}/{rel}"] = data


def _output_node(output: Any, by_name: dict[str, Node]) -> Node:
    """The node behind a user output. torch.export lists a returned constant by its value,
    so a returned string is a name no node has."""
    if not isinstance(output, str) or output not in by_name:
        raise EdgeportError(f"the model returns a constant ({output!r}); return only tensors computed from inputs")
    return by_name[output]


def _tensor_spec(node: Node) -> TensorSpec:
    val = node.meta.get("val")
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):  # .item(), float(t), t.shape[0] on a dim
        raise EdgeportError(f"value {node.name} is a Python {type(val).__name__.removeprefix('Sym').lower()} computed "
                            "from a tensor; method inputs and outputs must be tensors",
                            hint="return the tensor itself (x.sum(), not x.sum().item() or float(x.sum()))")
    if not isinstance(val, torch.Tensor):
        raise EdgeportError(f"value {node.name} is {a_type(val)}; method inputs and outputs must be tensors")
    shape = tuple(int(d) if isinstance(d, int) or not hasattr(d, "node") else str(d) for d in val.shape)
    return TensorSpec(node.name, dtype_name(val.dtype), shape)


def _symbols(program: ExportedProgram) -> dict[str, tuple[int, int | None]]:
    symbols = {}
    for symbol, bounds in program.range_constraints.items():
        lower, upper = _finite(bounds.lower), _finite(bounds.upper)
        symbols[str(symbol)] = (0 if lower is None else lower, upper)
    return symbols


def _finite(bound: Any) -> int | None:
    """A range bound as an int, None when unbounded: torch's int_oo (the upper bound of a
    Dim without max) says it is finite, so it is compared by identity."""
    from torch.utils._sympy.numbers import int_oo

    if bound is int_oo or bound is -int_oo or not bound.is_finite:
        return None
    return int(bound)
