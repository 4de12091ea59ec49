"""The backend contract: what a plugin implements so edgeport can delegate work to it.

A backend answers four questions, each at its own time:

- `availability()` — can it compile here, can it run here, and if not, why;
- `support(node, ctx)` — may it take this node? (asked once per node, before lowering);
- `compile(program, options)` — ahead of time: turn a partition into bytes;
- `load(artifact)` — at run time: turn those bytes into something that runs.

Optionally, `merge(artifacts)` stores the partitions of several methods as one artifact.

Everything a backend returns is plain data (`Support`, `Availability`, `Artifact`), so
the core can record it, save it and show it without knowing the backend.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx import Node


@dataclass(frozen=True)
class Support:
    """A backend's answer for one node: yes, or no with a reason a user can act on."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Support:
        return _YES

    @classmethod
    def no(cls, reason: str) -> Support:
        if not reason:
            raise ValueError("Support.no() needs a reason: say why the node is declined")
        return cls(False, reason)

    def __bool__(self) -> bool:
        return self.ok


_YES = Support(True)


@dataclass(frozen=True)
class Availability:
    """Whether this machine can compile for, and run, a backend.

    `runs_on` labels how a run happens here when it is not the real target: a QNN
    simulator, or a CPU reference of an NPU program. Every report repeats that label.
    """

    can_compile: bool
    can_run: bool
    why: str = ""  # why not, when either flag is False
    runs_on: str = "device"  # "device", "simulator", "reference (CPU)", ...


@dataclass(frozen=True)
class Artifact:
    """What `compile` produces: opaque bytes plus JSON-able facts about them.

    `suffix` names the file inside the program (".tflite", ".onnx", ...). `metadata`
    is saved in the manifest and handed back at load time. `options` is filled in by
    edgeport with the options the partition was compiled with.
    """

    data: bytes
    suffix: str = ".bin"
    metadata: dict[str, Any] = field(default_factory=dict)
    options: Any = None


@runtime_checkable
class Executable(Protocol):
    """A loaded artifact. Inputs arrive as contiguous CPU tensors in partition order."""

    def run(self, inputs: Sequence[torch.Tensor]) -> Sequence[Any]:
        """Return the partition's outputs, as tensors or numpy arrays, in order."""
        ...


@runtime_checkable
class Entries(Protocol):
    """A loaded merged artifact (`Backend.merge`): one executable per artifact merged."""

    def entry(self, index: int) -> Executable:
        ...


@dataclass(frozen=True)
class PartitionRules:
    """Limits a backend sets on the partitions it is given.

    A partition smaller than `min_nodes`, or made only of `never_alone` ops (a lone
    reshape is a copy across the boundary for no work), is handed back to portable.
    """

    min_nodes: int = 1
    never_alone: frozenset[Any] = frozenset()


@dataclass(frozen=True)
class NoOptions:
    """The options of a backend that takes none."""


@dataclass(frozen=True)
class SupportContext:
    """What `support()` may look at besides the node: the whole program and options."""

    program: ExportedProgram
    options: Any

    @functools.cached_property
    def _specs(self) -> dict[str, Any]:
        return {spec.arg.name: spec for spec in self.program.graph_signature.input_specs}

    @functools.cached_property
    def _mutated(self) -> set[str]:
        return set(self.program.graph_signature.buffers_to_mutate.values())

    def constant(self, node: Node) -> torch.Tensor | None:
        """The value of a parameter, buffer or constant input; None for anything else.

        A buffer the program mutates is state, not a constant, so it returns None.
        """
        if node.op != "placeholder":
            return None
        spec = self._specs.get(node.name)
        if spec is None or spec.kind == InputKind.USER_INPUT:
            return None
        if spec.kind == InputKind.BUFFER and spec.target in self._mutated:
            return None
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER) and spec.target in self.program.state_dict:
            return self.program.state_dict[spec.target]
        value = self.program.constants.get(spec.target)
        return value if isinstance(value, torch.Tensor) else None


class Backend:
    """Subclass this to write a backend. Only `name`, `support`, `compile` and `load`
    are required; everything else has a default that suits a simple backend.
    """

    name: ClassVar[str]
    options: ClassVar[type] = NoOptions
    rules: ClassVar[PartitionRules] = PartitionRules()

    @property
    def version(self) -> str:
        """Recorded with every artifact, so a program says what produced it."""
        return "0"

    def availability(self) -> Availability:
        return Availability(can_compile=True, can_run=True)

    def keep_ops(self) -> set[torch._ops.OpOverload]:
        """Ops to keep undecomposed at capture when this backend supports the node."""
        return set()

    def support(self, node: Node, ctx: SupportContext) -> Support:
        raise NotImplementedError(f"backend {self.name!r} must implement support()")

    def compile(self, program: ExportedProgram, options: Any) -> Artifact:
        raise NotImplementedError(f"backend {self.name!r} must implement compile()")

    def load(self, artifact: Artifact) -> Executable:
        raise NotImplementedError(f"backend {self.name!r} must implement load()")

    def merge(self, artifacts: Sequence[Artifact]) -> Artifact | None:
        """Optionally, one artifact holding several (the partitions of a program's
        methods, compiled with the same options), so what they share (weights) is stored
        and loaded once. Return None (the default) to keep them apart. ``load`` of the
        merged artifact must return an `Entries` whose ``entry(i)`` runs ``artifacts[i]``."""
        return None


def options_from_dict(backend: Backend, values: dict[str, Any] | None) -> Any:
    """Build a backend's options dataclass from plain values (e.g. from the CLI or a
    manifest), converting strings to each field's type; unknown keys are an error."""
    from .errors import BackendError

    cls = backend.options
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values or {}) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise BackendError(
            f"backend {backend.name!r} has no option {', '.join(unknown)}",
            hint=f"its options are: {known}",
        )
    converted = {k: _convert(backend, fields[k], v) for k, v in (values or {}).items()}
    return cls(**converted)


def options_to_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


def _convert(backend: Backend, f: dataclasses.Field, value: Any) -> Any:
    from .errors import BackendError

    if not isinstance(value, str):
        return value
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("bool"):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes", "on")
    except ValueError:
        raise BackendError(
            f"option {backend.name}.{f.name} expects {kind}, got {value!r}"
        ) from None
    return value
