"""Whether a manifest's plan holds together, checked when a program is loaded.

`manifest_schema` says each field has the right type; this module checks what the
fields say about each other, so an edited or damaged plan is refused at load, never
at the first call, and never runs with a different answer:

- every value a step reads is produced before it (a method input, program state or an
  earlier step's output), no value has two producers (a step may hand back a value it
  reads), and every method output and state write exists;
- every path the plan names is a file of the program, every delegate step names an
  artifact of its own backend, and every state tensor's file has its exact byte size;
- the plan agrees with every other record of the same fact: method input and output
  names with their specs; dtypes and shapes with the placement report's boundary
  values and with the program state; each step's inputs and outputs with its
  partition in the report, and with the names its artifact's metadata records; the
  output structure (``out_spec``) with the number of outputs. Outputs swapped in one
  place disagree with another;
- a dynamic dim's range holds a size, and a row update's rows fit its state.

A rewrite of every record at once cannot be detected by any check of a file against
itself; for version-2 files the manifest digest (`program.py`) catches edits instead.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .arrays import stored_size
from .errors import ProgramError
from .manifest import PORTABLE, Manifest, MethodPlan, Step
from .manifest_schema import MAX_FILE_SIZE, ManifestError, parse_manifest_json
from .output_tree import check_structure
from .shared_tensors import is_shared_tensor_path

Fact = tuple[str, tuple[Any, ...]]  # (dtype, shape) of one value


def check_plan(manifest: Manifest) -> None:
    """Raise `ManifestError` naming the first inconsistency of ``manifest``'s plan."""
    for name, plan in manifest.methods.items():
        if plan.name != name:
            raise ManifestError(f"method {name!r} calls itself {plan.name!r}")
        if name not in manifest.report:
            raise ManifestError(f"method {name!r} has no placement report")
        report = manifest.report[name]
        try:
            _check_signature(plan, manifest.state, report)
            _check_dataflow(plan)
            _check_steps(plan, manifest, report)
            _check_out_spec(plan)
        except ManifestError as exc:
            raise ManifestError(f"method {name!r}: {exc}") from None
    extra = sorted(set(manifest.report) - set(manifest.methods))
    if extra:
        raise ManifestError(f"the report describes method(s) {', '.join(extra)}, which the program does not have")
    _check_state(manifest)
    _check_shared_tensors(manifest)
    used = {s.artifact for plan in manifest.methods.values() for s in plan.steps}
    for path in manifest.artifacts:
        if path not in used:
            raise ManifestError(f"artifact {path} is not used by any step")


# -- what goes in and out of a method --------------------------------------------------------


def _check_signature(plan: MethodPlan, state: Mapping[str, Mapping[str, Any]], report: Mapping[str, Any]) -> None:
    """Names agree with specs; every record of a value's dtype and shape agrees."""
    if list(plan.input_values) != [s.name for s in plan.inputs]:
        raise ManifestError(f"input_values {list(plan.input_values)} do not name its input specs in order")
    if list(plan.output_values) != [s.name for s in plan.outputs]:
        raise ManifestError(f"output_values {list(plan.output_values)} do not name its output specs in order")
    if len(set(plan.input_values)) != len(plan.input_values):
        raise ManifestError(f"input_values {list(plan.input_values)} name one value twice")
    for mapping, what in ((plan.state_reads, "state_reads"), (plan.state_writes, "state_writes")):
        for value, fqn in mapping.items():
            if fqn not in state:
                raise ManifestError(f"{what} names program state {fqn!r}, which the program does not have")
        if len(set(mapping.values())) != len(mapping):
            raise ManifestError(f"{what} names one program state twice")
    updated = {u.state for u in plan.row_updates}
    if updated - set(state):
        raise ManifestError(f"row_updates name program state {sorted(updated - set(state))[0]!r}, "
                            "which the program does not have")
    if set(plan.state_reads.values()) != set(plan.state_writes.values()) | updated:
        raise ManifestError("it reads and writes different program state (each state it updates is read first)")
    facts = _Facts()
    for name, info in report.get("values", {}).items():
        facts.add(name, (info["dtype"], tuple(info["shape"])), "the placement report")
    for spec in plan.inputs:
        facts.add(spec.name, (spec.dtype, spec.shape), "its input spec")
    prefixes = _check_prefixes(plan, state)
    for value, fqn in (*plan.state_reads.items(), *plan.state_writes.items()):
        shape = tuple(state[fqn]["shape"])
        facts.add(value, (state[fqn]["dtype"], prefixes.get(value, shape)), f"program state {fqn!r}")
    for spec in plan.outputs:
        facts.add(spec.name, (spec.dtype, spec.shape), "its output spec")
    _check_row_updates(plan, state, facts)
    for symbol, (low, high) in plan.symbols.items():
        if high is not None and low > high:
            raise ManifestError(f"symbol {symbol!r} ranges from {low} to {high}, which no size is")


def _check_row_updates(plan: MethodPlan, state: Mapping[str, Mapping[str, Any]], facts: "_Facts") -> None:
    """Each row update writes rows shaped like its state's, along a dim the state has,
    at one-dimensional integer positions."""
    for u in plan.row_updates:
        shape = tuple(state[u.state]["shape"])
        where = f"row update of {u.state!r}"
        if u.dim >= len(shape):
            raise ManifestError(f"{where} writes along dim {u.dim}, which its {len(shape)}-dim state lacks")
        rows, positions = facts.get(u.rows), facts.get(u.positions)
        if rows is not None:
            dtype, row_shape = rows
            other_dims = [(a, b) for i, (a, b) in enumerate(zip(row_shape, shape)) if i != u.dim]
            if dtype != state[u.state]["dtype"] or len(row_shape) != len(shape) or \
                    any(isinstance(a, int) and a != b for a, b in other_dims):
                raise ManifestError(f"{where} writes {u.rows!r}, {dtype}{list(row_shape)}, which does not fit "
                                    f"the state's {state[u.state]['dtype']}{list(shape)} along dim {u.dim}")
        if positions is not None and (positions[0] not in ("int32", "int64") or len(positions[1]) != 1):
            raise ManifestError(f"{where} takes positions {u.positions!r}, {positions[0]}{list(positions[1])}, "
                                "not a one-dim integer tensor")


def _check_prefixes(plan: MethodPlan, state: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """Each state prefix reads a state through an input's dim; returns value -> its
    shape (the state's, its first dim the input's)."""
    inputs = {spec.name: spec for spec in plan.inputs}
    shapes = {}
    for p in plan.state_prefixes:
        fqn = plan.state_reads.get(p.value)
        if fqn is None:
            raise ManifestError(f"state_prefixes read {p.value!r}, which is no state it reads")
        spec = inputs.get(p.length_of)
        if spec is None or p.length_dim >= len(spec.shape):
            raise ManifestError(f"state_prefixes size {p.value!r} by dim {p.length_dim} of {p.length_of!r}, "
                                "which is no dim of its inputs")
        shape = tuple(state[fqn]["shape"])
        if not shape:
            raise ManifestError(f"state_prefixes read rows of {fqn!r}, which has no dims")
        shapes[p.value] = (spec.shape[p.length_dim], *shape[1:])
    return shapes


class _Facts:
    """Every record of one value's dtype and shape, which must all agree."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Fact, str]] = {}

    def add(self, value: str, fact: Fact, source: str) -> None:
        if value in self._seen and self._seen[value][0] != fact:
            (dtype, shape), first = self._seen[value]
            raise ManifestError(
                f"value {value!r} is {fact[0]}{list(fact[1])} in {source} but {dtype}{list(shape)} in {first}"
            )
        self._seen.setdefault(value, (fact, source))

    def get(self, value: str) -> Fact | None:
        seen = self._seen.get(value)
        return seen[0] if seen else None


def _check_dataflow(plan: MethodPlan) -> None:
    """Each value is produced once, before any step reads it."""
    producer = {value: "an input" for value in plan.input_values}
    for value in plan.state_reads:
        if value in producer:
            raise ManifestError(f"value {value!r} is both an input and program state")
        producer[value] = "program state"
    for i, step in enumerate(plan.steps):
        for value in step.inputs:
            if value not in producer:
                raise ManifestError(f"step {i} reads {value!r} before anything produces it")
        if len(set(step.outputs)) != len(step.outputs):
            raise ManifestError(f"step {i} writes one value twice: {list(step.outputs)}")
        for value in step.outputs:
            # A step of runtime checks alone hands its first input back (lowering needs
            # one output to store it); any other value has one producer.
            if value in producer and value not in step.inputs:
                raise ManifestError(f"step {i} writes {value!r}, which {producer[value]} already produced")
            producer.setdefault(value, f"step {i}")
    row_values = (v for u in plan.row_updates for v in (u.positions, u.rows))
    for value in (*plan.output_values, *plan.state_writes, *row_values):
        if value not in producer:
            raise ManifestError(f"its result {value!r} is produced by no step")


# -- steps ---------------------------------------------------------------------------------


def _check_steps(plan: MethodPlan, manifest: Manifest, report: Mapping[str, Any]) -> None:
    rows: dict[int, Mapping[str, Any]] = {}
    for row in report["partitions"]:
        if row["id"] in rows:
            raise ManifestError(f"the report lists partition {row['id']} twice")
        rows[row["id"]] = row
    for node in report["nodes"]:
        if node["partition"] not in rows:
            raise ManifestError(f"the report puts node {node['name']!r} in partition {node['partition']}, "
                                "which it does not list")
    seen: set[int] = set()
    for i, step in enumerate(plan.steps):
        if step.partition in seen:
            raise ManifestError(f"two steps run partition {step.partition}")
        seen.add(step.partition)
        row = rows.get(step.partition)
        if row is None:
            raise ManifestError(f"step {i} runs partition {step.partition}, which the report does not list")
        ran_on = step.backend if step.kind == "delegate" else PORTABLE
        if (row["backend"], row["inputs"], row["outputs"]) != (ran_on, list(step.inputs), list(step.outputs)):
            raise ManifestError(
                f"step {i} ({ran_on}: {list(step.inputs)} -> {list(step.outputs)}) disagrees with partition "
                f"{step.partition} of the report ({row['backend']}: {row['inputs']} -> {row['outputs']})"
            )
        if step.kind == "delegate":
            _check_delegate(i, step, manifest)
        else:
            _check_portable(i, step, manifest)


def _check_delegate(i: int, step: Step, manifest: Manifest) -> None:
    if step.backend is None or step.artifact is None or step.program is not None:
        raise ManifestError(f"delegate step {i} needs a backend and an artifact, and no program")
    info = manifest.artifacts.get(step.artifact)
    if info is None or step.artifact not in manifest.files:
        raise ManifestError(f"step {i} names artifact {step.artifact}, which the program does not have")
    if info.backend != step.backend:
        raise ManifestError(f"step {i} runs on {step.backend!r} but its artifact was made by {info.backend!r}")
    if step.reference is not None:
        _check_torch_program(i, step.reference, manifest)
    metadata = info.metadata
    if step.entry is not None:  # one entry of a merged artifact (Backend.merge) records its own names
        entries = metadata.get("entries")
        if not isinstance(entries, list) or not 0 <= step.entry < len(entries):
            raise ManifestError(f"step {i} runs entry {step.entry} of {step.artifact}, which has no such entry")
        metadata = entries[step.entry] if isinstance(entries[step.entry], dict) else {}
    for key, names in (("inputs", step.inputs), ("outputs", step.outputs)):
        _check_recorded_names(i, key, metadata.get(key), names)


def _check_recorded_names(i: int, key: str, recorded: Any, names: Sequence[str]) -> None:
    """A backend may record its artifact's inputs/outputs in its metadata, as names or as
    ``{"name": ...}`` objects (writing-a-backend.md). Where it does, they must be the
    step's: the same count and, where they are the step's own names, the same order.
    Names of the backend's own (an ONNX graph's) are not compared, even where one
    happens to equal some other value of the method: a qualcomm partition's ONNX output
    ``dequantize_per_tensor_3`` is not the method's value of that name."""
    if not isinstance(recorded, list):
        return
    if len(recorded) != len(names):
        raise ManifestError(f"step {i} has {len(names)} {key} but its artifact records {len(recorded)}")
    recorded_names = [entry.get("name") if isinstance(entry, dict) else entry for entry in recorded]
    if sorted(map(str, recorded_names)) == sorted(names) and recorded_names != list(names):
        raise ManifestError(f"step {i} {key} {list(names)} are not in the order its artifact records them")


def _check_portable(i: int, step: Step, manifest: Manifest) -> None:
    if step.program is None or step.backend is not None or step.artifact is not None or step.reference is not None:
        raise ManifestError(f"portable step {i} needs a program, and no backend, artifact or reference")
    _check_torch_program(i, step.program, manifest)


def _check_torch_program(i: int, prefix: str, manifest: Manifest) -> None:
    for part in ("graph.json", "tensors.json"):
        if f"{prefix}/{part}" not in manifest.files:
            raise ManifestError(f"step {i} names torch program {prefix}, which has no {part}")


def _check_shared_tensors(manifest: Manifest) -> None:
    """The files of tensors several torch programs read: only ``tensors/*.bin`` files of the program."""
    for path in manifest.shared_tensors:
        if not is_shared_tensor_path(path):
            raise ManifestError(f"shared tensor file {path} is not in the folder tensors/ (tensors/<name>.bin)")
        if path not in manifest.files:
            raise ManifestError(f"shared tensor file {path} is not a file of the program")


def _check_out_spec(plan: MethodPlan) -> None:
    """The output structure must be one edgeport can rebuild, with one leaf per output."""
    parse_manifest_json(plan.out_spec.encode(), what="out_spec")  # size, depth, duplicate keys
    try:
        check_structure(plan.out_spec, len(plan.output_values))
    except ProgramError as exc:
        raise ManifestError(str(exc)) from None


# -- state ---------------------------------------------------------------------------------


def _check_state(manifest: Manifest) -> None:
    written = {fqn for plan in manifest.methods.values() for fqn in plan.state_writes.values()}
    written |= {u.state for plan in manifest.methods.values() for u in plan.row_updates}
    for fqn, entry in manifest.state.items():
        if fqn not in written:
            raise ManifestError(f"program state {fqn!r} is written by no method")
        if ("file" in entry) == ("fill" in entry):
            has = "both a file and" if "file" in entry else "neither a file nor"
            raise ManifestError(f"program state {fqn!r} has {has} a fill value (it needs one of them)")
        needed = stored_size(entry)
        if "fill" in entry:
            if needed > MAX_FILE_SIZE:  # what a file could hold, and far more than any device
                raise ManifestError(f"program state {fqn!r} ({entry['dtype']}{entry['shape']}) declares {needed} "
                                    "bytes")
            continue
        info = manifest.files.get(entry["file"])
        if info is None:
            raise ManifestError(f"program state {fqn!r} names file {entry['file']}, which the program does not have")
        if info.size != needed:
            raise ManifestError(f"program state {fqn!r} ({entry['dtype']}{entry['shape']}) needs {needed} bytes, "
                                f"its file has {info.size}")
