"""The manifest of a .edgeport program: typed dataclasses and their JSON form.

`manifest_from_json` builds the dataclasses from JSON that `manifest_schema` has
already checked, so it has no error paths of its own.

Format history (every version stays readable: `program.py` keeps a reader for each,
`manifest_schema.SCHEMAS` its schema; docs/program-format.md describes the file):
    1 — first version (edgeport 0.1; ``tests/data/golden_v1.edgeport``).
    2 — adds ``metadata`` (free-form JSON for applications, e.g. ``{"llm": {...}}``)
        and the ``manifest.json.sha256`` entry beside the manifest, so an edited or
        damaged manifest is detected. In every version, each file in the zip but
        those two is listed in ``files`` with its size and sha256.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

FORMAT = "edgeport"
VERSION = 2
PORTABLE = "portable"  # a step no backend took: a torch program, run with torch
# op-name prefixes of the quantize/dequantize nodes in a placement report (PT2E's, torchao's)
QUANTIZATION_OPS = ("quantized_decomposed.", "torchao.")


def delegated_plumbing(node: Mapping[str, Any]) -> bool:
    """Whether a report row only quantizes or dequantizes a value (PT2E's Q/DQ pairs
    around each quantized op: a quantized MobileNetV2 has 200-250 of them beside its ~100
    ops) that a backend took as part of its ops' quantized form. What another backend
    said of it (the cpu refuses qualcomm's uint8) says nothing about the model; one
    left to portable torch is worth seeing."""
    return node["op"].startswith(QUANTIZATION_OPS) and node["backend"] != PORTABLE


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
class StatePrefix:
    """A state a method reads only the first rows of: value ``value`` (one of its
    ``state_reads``) is ``state[:n]``, n the size of dim ``length_dim`` of input value
    ``length_of``. The rows along a state's first dim are a contiguous prefix, so the
    runtime passes a view, and a delegate may read it where it lies: how a KV cache
    window is read with no copy (see `state_rows.py`)."""

    value: str
    length_of: str
    length_dim: int


@dataclass(frozen=True)
class MethodPlan:
    """How to run one method (e.g. "forward", "prefill", "decode").

    Values are named after the nodes of the exported graph. ``state_reads`` maps a
    value to the program state it starts as; ``state_writes`` maps a value to the state
    it updates when the call finishes (a mutated buffer); ``row_updates`` write only
    some rows of a state (a KV cache), in place; ``state_prefixes`` read only its
    first rows.
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
    out_spec: str = ""  # the eager output structure, as output_tree.dump_structure wrote it (JSON)
    row_updates: tuple[RowUpdate, ...] = ()
    state_prefixes: tuple[StatePrefix, ...] = ()


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
    # Files of tensors that several torch programs read (shared_tensors.py); also in ``files``.
    shared_tensors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for plan in data["methods"].values():
            if not plan["state_prefixes"]:  # written only where used: an edgeport before it refuses the field
                del plan["state_prefixes"]
        if not self.shared_tensors:  # likewise
            del data["shared_tensors"]
        return data


def manifest_from_json(data: dict[str, Any]) -> Manifest:
    """The dataclasses of a manifest that `manifest_schema.check_manifest` accepted."""
    methods = {}
    for name, m in data["methods"].items():
        methods[name] = MethodPlan(
            name=m["name"],
            inputs=tuple(_spec(s) for s in m["inputs"]),
            outputs=tuple(_spec(s) for s in m["outputs"]),
            input_values=tuple(m["input_values"]),
            output_values=tuple(m["output_values"]),
            steps=tuple(Step(**{**s, "inputs": tuple(s["inputs"]), "outputs": tuple(s["outputs"])})
                        for s in m["steps"]),
            state_reads=dict(m["state_reads"]),
            state_writes=dict(m["state_writes"]),
            symbols={k: (low, high) for k, (low, high) in m["symbols"].items()},
            out_spec=m["out_spec"],
            row_updates=tuple(RowUpdate(**u) for u in m.get("row_updates", [])),  # optional: LLM programs
            state_prefixes=tuple(StatePrefix(**p) for p in m.get("state_prefixes", [])),  # optional: cpu LLMs
        )
    return Manifest(
        producer=dict(data["producer"]),
        methods=methods,
        artifacts={p: ArtifactInfo(**a) for p, a in data["artifacts"].items()},
        state=dict(data["state"]),
        files={p: FileInfo(f["size"], f["sha256"]) for p, f in data["files"].items()},
        report=dict(data["report"]),
        metadata=dict(data.get("metadata", {})),  # version 1 has none
        format=data["format"],
        version=data["version"],
        shared_tensors=tuple(data.get("shared_tensors", ())),  # optional: programs whose torch programs share tensors
    )


def _spec(s: dict[str, Any]) -> TensorSpec:
    return TensorSpec(s["name"], s["dtype"], tuple(s["shape"]))
