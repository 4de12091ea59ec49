"""Lowering one method: partition its graph, compile each partition, build the plan.

A partition whose compile raises falls back to portable torch with the reason in the
report (``strict`` raises instead). When a toolchain refuses particular nodes
(`DeclineNodes`), those become "no" answers of that backend and the graph is
partitioned again; partitions compiled before are reused, not compiled twice.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from edgeport.partitioners.grow import Partition
from edgeport.partitioners.partition import PartitionPlan, partition_graph
from edgeport.partitioners.policy import PORTABLE
from edgeport.partitioners.support import SupportMatrix, ask_support

from .backend import Artifact, Backend, Support, options_to_dict, support_question
from .errors import DeclineNodes, EdgeportError, LoweringError
from .manifest import ArtifactInfo, MethodPlan, RowUpdate, Step, TensorSpec
from .output_tree import dump_structure
from .portable import program_to_files
from .report import placement_report
from .state_rows import split_row_updates
from .subprogram import Subprogram, extract_subprogram
from .tensors import dtype_name

log = logging.getLogger("edgeport.lowering")

MAX_REPARTITIONS = 32  # each round declines at least one node; this only bounds a buggy backend
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LoweredMethod:
    plan: MethodPlan
    files: dict[str, bytes]  # path in the program file -> bytes
    artifacts: dict[str, ArtifactInfo]
    report: dict[str, Any]


def lower_method(
    name: str,
    program: ExportedProgram,
    backends: Mapping[str, Backend],
    options: Mapping[str, Any],
    *,
    strict: bool = False,
    keep_reference: Callable[[str], bool] = lambda backend: False,
    progress: Progress | None = None,
    declined: Mapping[str, str] | None = None,
) -> LoweredMethod:
    """``declined`` maps a backend to the reason it declines every node (a backend that
    does not offer the quantization scheme asked for)."""
    if program.graph_signature.user_inputs_to_mutate:
        mutated = ", ".join(program.graph_signature.user_inputs_to_mutate.values())
        raise EdgeportError(
            f"method {name!r} mutates its input(s) {mutated} in place",
            hint="return the new value instead, or keep it in a registered buffer (program state)",
        )
    row_updates = split_row_updates(program)
    nodes = list(program.graph.nodes)
    # Read the I/O specs before any backend looks at the graph: a support check that
    # calls int() on a symbolic size would specialize that dim for good.
    io = _io_specs(program, nodes)
    matrix = ask_support(
        nodes, {b: _support_fn(backend, program, options[b], (declined or {}).get(b)) for b, backend in backends.items()}
    )
    compiled: dict[tuple[str, tuple[str, ...]], Artifact | str] = {}  # artifact, or why it failed
    cut = _Cutter(program)
    for _ in range(MAX_REPARTITIONS):
        plan = partition_graph(nodes, matrix, list(backends), {b: be.rules for b, be in backends.items()})
        if _compile_all(name, cut, plan, backends, options, matrix, compiled, strict, progress):
            break
    else:
        raise LoweringError(f"method {name!r}: backends kept refusing nodes after {MAX_REPARTITIONS} rounds")
    lowered = _assemble(name, program, cut, nodes, io, plan, matrix, backends, options, compiled, keep_reference)
    return _with_row_updates(lowered, row_updates)


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


def _support_fn(backend: Backend, program: ExportedProgram, options: Any, declined: str | None) -> Callable[[Node], Any]:
    if declined:
        no = Support.no(declined)
        return lambda node: no
    return support_question(backend, program, options)


def _key(partition: Partition) -> tuple[str, tuple[str, ...]]:
    return partition.backend, tuple(n.name for n in partition.nodes)


def _compile_all(name, cut, plan, backends, options, matrix, compiled, strict, progress) -> bool:
    """Compile every delegated partition not compiled yet; False if nodes were declined
    (the caller partitions again)."""
    delegated = [p for p in plan.partitions if p.backend != PORTABLE]
    for i, partition in enumerate(delegated):
        key = _key(partition)
        if key in compiled:
            continue
        if progress:
            progress(f"{name}: compiling partition {i + 1}/{len(delegated)} on {partition.backend} "
                     f"({len(partition.nodes)} nodes)")
        backend = backends[partition.backend]
        try:
            artifact = backend.compile(cut(partition).program, options[partition.backend])
            if not isinstance(artifact, Artifact):
                raise TypeError(f"compile() returned {type(artifact).__name__}, not an edgeport.Artifact")
            compiled[key] = artifact
        except DeclineNodes as declined:
            known = {n.name: n for n in partition.nodes}
            unknown = set(declined.reasons) - known.keys()
            if unknown or not declined.reasons:
                compiled[key] = f"compile declined unknown nodes {sorted(unknown)}"
                continue
            for name, reason in declined.reasons.items():
                node = known[name]
                if node.target is operator.getitem:  # it runs wherever its producer runs
                    node = node.args[0]
                matrix.decline(node.name, partition.backend, reason)
            return False
        except Exception as exc:
            reason = f"compile failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if strict:
                raise LoweringError(
                    f"method {name!r}, partition {partition.id} ({len(partition.nodes)} nodes) on "
                    f"{partition.backend!r}: {reason}",
                    hint="drop --strict to fall back to portable torch for this partition",
                ) from exc
            log.warning("partition %d on %s falls back to portable: %s", partition.id, partition.backend, reason)
            compiled[key] = reason
    return True


def _assemble(name, program, cut, nodes, io, plan: PartitionPlan, matrix: SupportMatrix, backends, options, compiled,
              keep_reference) -> LoweredMethod:
    """Turn compiled partitions into steps and files, then the method's plan and report."""
    files: dict[str, bytes] = {}
    artifacts: dict[str, ArtifactInfo] = {}
    steps: list[Step] = []
    fallbacks: dict[int, str] = {}
    for partition in plan.partitions:
        sub = cut(partition)
        if not sub.outputs:  # assertions on constants alone: nothing can differ at run time
            continue
        outcome = compiled.get(_key(partition)) if partition.backend != PORTABLE else None
        stem = f"{name}/{partition.id}"
        if isinstance(outcome, Artifact):
            path = f"artifacts/{stem}{outcome.suffix}"
            files[path] = outcome.data
            artifacts[path] = ArtifactInfo(partition.backend, backends[partition.backend].version,
                                           options_to_dict(options[partition.backend]), dict(outcome.metadata))
            reference = f"reference/{stem}" if keep_reference(partition.backend) else None
            if reference:
                _add_program_files(files, reference, sub.program)
            steps.append(Step("delegate", partition.id, sub.inputs, sub.outputs, backend=partition.backend,
                              artifact=path, reference=reference))
        else:
            if isinstance(outcome, str):
                fallbacks[partition.id] = f"{partition.backend}: {outcome}"
            prefix = f"portable/{stem}"
            _add_program_files(files, prefix, sub.program)
            steps.append(Step("portable", partition.id, sub.inputs, sub.outputs, program=prefix))
    subprograms = {p.id: cut(p) for p in plan.partitions}
    report = placement_report(nodes, matrix, plan, subprograms, fallbacks, steps)
    return LoweredMethod(_method_plan(name, program, io, steps), files, artifacts, report)


def _with_row_updates(lowered: LoweredMethod, updates: tuple[RowUpdate, ...]) -> LoweredMethod:
    """The plan writes these states row by row, not whole."""
    if not updates:
        return lowered
    rows = {u.rows for u in updates}
    writes = {value: fqn for value, fqn in lowered.plan.state_writes.items() if value not in rows}
    plan = dataclasses.replace(lowered.plan, state_writes=writes, row_updates=updates)
    return dataclasses.replace(lowered, plan=plan)


def _io_specs(program: ExportedProgram, nodes: list[Node]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    signature = program.graph_signature
    by_name = {n.name: n for n in nodes}
    inputs = tuple(_tensor_spec(by_name[n]) for n in signature.user_inputs)
    outputs = tuple(_tensor_spec(by_name[_output_name(o)]) for o in signature.user_outputs)
    return inputs, outputs


def _method_plan(name: str, program: ExportedProgram, io: tuple, steps: list[Step]) -> MethodPlan:
    signature = program.graph_signature
    mutated = signature.buffers_to_mutate  # output node name -> buffer fqn
    inputs, outputs = io
    return MethodPlan(
        name=name,
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


def _output_name(name: Any) -> str:
    if not isinstance(name, str):
        raise EdgeportError(f"the model returns a constant ({name!r}); return only tensors computed from inputs")
    return name


def _tensor_spec(node: Node) -> TensorSpec:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise EdgeportError(f"value {node.name} is a {type(val).__name__}; method inputs and outputs must be tensors")
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
