"""The manifest of a .edgeport program: typed dataclasses and their JSON form.

Format history (a reader for every version stays in `program.py`):
    1 — first version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = "edgeport"
VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """One method input or output. A dim is an int, or a symbol name shared across
    inputs whose range is in `MethodPlan.symbols`."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Step:
    """One unit of the execution plan.

    kind "delegate": run ``artifact`` with ``backend``; kind "portable": run the torch
    program stored under ``program``. ``reference`` is the partition's own torch
    program, kept so a delegate step can be checked or run where its backend cannot.
    ``inputs``/``outputs`` name values of the method.
    """

    kind: str
    partition: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    backend: str | None = None
    artifact: str | None = None
    program: str | None = None
    reference: str | None = None
    entry: int | None = None  # which part of a merged artifact runs this step (`Backend.merge`)


@dataclass(frozen=True)
class RowUpdate:
    """Rows of program state a method writes in place when its call finishes
    (``state.index_copy_(dim, values[positions], values[rows])``), instead of a full
    write: how a KV cache is updated one token at a time (see `state_rows.py`)."""

    state: str  # the state's fqn
    dim: int
    positions: str  # value holding the int64 positions along ``dim``
    rows: str  # value holding the new rows: the state's shape with len(positions) at ``dim``


@dataclass(frozen=True)
class MethodPlan:
    """How to run one method (e.g. "forward", "prefill", "decode").

    Values are named after the nodes of the exported graph. ``state_reads`` maps a
    value to the program state it starts as; ``state_writes`` maps a value to the state
    it updates when the call finishes (a mutated buffer); ``row_updates`` write only
    some rows of a state (a KV cache), in place.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_values: tuple[str, ...]
    output_values: tuple[str, ...]
    steps: tuple[Step, ...]
    state_reads: dict[str, str] = field(default_factory=dict)
    state_writes: dict[str, str] = field(default_factory=dict)
    symbols: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    out_spec: str = ""  # torch pytree spec (JSON) of the eager output structure
    row_updates: tuple[RowUpdate, ...] = ()


@dataclass(frozen=True)
class ArtifactInfo:
    backend: str
    backend_version: str
    options: dict[str, Any]
    metadata: dict[str, Any]


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str


@dataclass
class Manifest:
    producer: dict[str, str]
    methods: dict[str, MethodPlan]
    artifacts: dict[str, ArtifactInfo]  # path -> facts about the bytes at that path
    state: dict[str, dict[str, Any]]  # fqn -> {"file", "dtype", "shape"}
    files: dict[str, FileInfo]  # every other file in the zip -> size and checksum
    report: dict[str, dict[str, Any]]  # method -> placement report (see report.py)
    # What a program carries for its users beyond the plan, by topic (e.g. "llm": the
    # tokenizer and chat files it ships, its stop tokens); edgeport itself reads none of it.
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def manifest_from_json(data: dict[str, Any]) -> Manifest:
    """Parse a version-1 manifest; KeyError/TypeError/ValueError mean it is malformed."""
    methods = {}
    for name, m in data["methods"].items():
        methods[name] = MethodPlan(
            name=m["name"],
            inputs=tuple(_spec(s) for s in m["inputs"]),
            outputs=tuple(_spec(s) for s in m["outputs"]),
            input_values=tuple(_strs(m["input_values"])),
            output_values=tuple(_strs(m["output_values"])),
            steps=tuple(_step(s) for s in m["steps"]),
            state_reads=dict(m.get("state_reads", {})),
            state_writes=dict(m.get("state_writes", {})),
            symbols={k: (int(v[0]), None if v[1] is None else int(v[1])) for k, v in m.get("symbols", {}).items()},
            out_spec=str(m.get("out_spec", "")),
            row_updates=tuple(_row_update(u) for u in m.get("row_updates", [])),
        )
    return Manifest(
        producer=dict(data["producer"]),
        methods=methods,
        artifacts={p: ArtifactInfo(**a) for p, a in data["artifacts"].items()},
        state=dict(data["state"]),
        files={p: FileInfo(int(f["size"]), str(f["sha256"])) for p, f in data["files"].items()},
        report=dict(data.get("report", {})),
        metadata=dict(data.get("metadata", {})),
        format=data["format"],
        version=int(data["version"]),
    )


def _spec(s: dict[str, Any]) -> TensorSpec:
    shape = tuple(d if isinstance(d, str) else int(d) for d in s["shape"])
    return TensorSpec(str(s["name"]), str(s["dtype"]), shape)


def _row_update(u: dict[str, Any]) -> RowUpdate:
    return RowUpdate(state=str(u["state"]), dim=int(u["dim"]), positions=str(u["positions"]), rows=str(u["rows"]))


def _step(s: dict[str, Any]) -> Step:
    if s["kind"] not in ("delegate", "portable"):
        raise ValueError(f"unknown step kind {s['kind']!r}")
    return Step(
        kind=s["kind"],
        partition=int(s["partition"]),
        inputs=tuple(_strs(s["inputs"])),
        outputs=tuple(_strs(s["outputs"])),
        backend=s.get("backend"),
        artifact=s.get("artifact"),
        program=s.get("program"),
        reference=s.get("reference"),
        entry=None if s.get("entry") is None else int(s["entry"]),
    )


def _strs(items: Any) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise TypeError(f"expected a list of names, got {items!r}")
    return items
