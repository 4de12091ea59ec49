"""The backend contract: what a plugin implements so edgeport can delegate work to it.

A backend answers four questions, each at its own time:

- `availability()` — can it compile here, can it run here, and if not, why;
- `prepare(program, options)` — optionally, what `support` should know about the whole
  program, worked out once (reaches `support` as ``ctx.prepared``);
- `support(node, ctx)` — may it take this node? (asked once per node, before lowering);
- `compile(program, options)` — ahead of time: turn a partition into bytes;
- `load(artifact)` — at run time: turn those bytes into something that runs;

and declares how exact its results are for given options (`tolerance(options)`).

A backend that runs quantized models also lists its `schemes` and returns a PT2E
quantizer for each (`quantizer(scheme, options)`); edgeport restricts its annotation
to the nodes the backend owns (docs/quantization.md).

Optionally, `merge(artifacts)` stores the partitions of several methods as one artifact.

Everything a backend returns is plain data (`Support`, `Availability`, `Artifact`), so
the core can record it, save it and show it without knowing the backend.

This module imports no torch: a device without torch registers backends and runs their
`load`; only the compile side (`support`, `compile`, `SupportContext.constant`) needs it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram
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

    `data` is ``bytes`` from `compile`; at `load` it is a read-only ``memoryview`` of
    the memory-mapped program file (no copy). A runtime that takes only ``bytes``
    calls `edgeport.as_bytes` on it: one copy, and the mapped pages are let go.

    `float_nodes` names the nodes the artifact computes in float although quantize and
    dequantize nodes surround them (an op whose int8 kernel the runtime lacks). The
    placement report reads what an op computes in off those neighbours, and shows these
    as float instead; it is not saved.
    """

    data: bytes | memoryview
    suffix: str = ".bin"
    metadata: dict[str, Any] = field(default_factory=dict)
    options: Any = None
    float_nodes: frozenset[str] = frozenset()


# Added by a caller to a loaded artifact's metadata, never saved: the artifact's sha256,
# asking its backend to keep what it derives from the weights at load (XNNPACK's packed
# weights) in a cache file named by it, mapped by later loads. The LLM session sets it;
# the cpu backend honours it (`backends/tflite/compiled.py`); other backends ignore it.
WEIGHT_CACHE_KEY = "weight_cache_key"


@runtime_checkable
class Executable(Protocol):
    """A loaded artifact. Inputs arrive in partition order as contiguous CPU torch
    tensors where torch is installed, as numpy arrays where it is not
    (`edgeport.as_numpy` takes either). An executable whose ``run`` takes numpy arrays
    whatever is installed may say so with a class attribute ``takes_numpy = True``:
    a program that is that one step then hands it its inputs as numpy arrays."""

    def run(self, inputs: Sequence[Any]) -> Sequence[Any]:
        """Return the partition's outputs, as numpy arrays (or torch tensors, where
        torch is installed), in order."""
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
    `never_alone` holds ops or their names (``"aten.view.default"``): names keep the
    backend's module free of torch at import, for the run side.
    """

    min_nodes: int = 1
    never_alone: frozenset[Any] = frozenset()


@dataclass(frozen=True)
class NoOptions:
    """The options of a backend that takes none."""


@dataclass(frozen=True)
class SupportContext:
    """What `support()` may look at besides the node: the whole program, the options
    instance, and what the backend's `prepare` returned for this program (``prepared``)."""

    program: ExportedProgram
    options: Any
    prepared: Any = None

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
        import torch
        from torch.export.graph_signature import InputKind

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


# The relative error a backend is allowed by default (`Backend.tolerance`): fp32 kernels
# that sum in another order differ from torch by ~1e-6 per op, and a partition chains tens.
FP32_TOLERANCE = 1e-4
# How far one float op may be from torch's, relative (`Backend.op_error`): fp32 kernels'
# exp, erf and rsqrt, or a requantization's scale multiply, are a few ulps off (1e-5 is
# about a hundred; devtools/rounding.py has the measurements); fp16 arithmetic rounds
# each value to 11 bits.
FP32_OP_ERROR = 1e-5
FP16_OP_ERROR = 2.0**-11


class Backend:
    """Subclass this to write a backend. Only `name`, `support`, `compile` and `load`
    are required (checked when the backend is registered); everything else has a
    default that suits a simple backend.

    Two things are called "options": the class attribute `options` is the options
    *class* (a dataclass type you declare once); every method parameter named
    ``options`` is an *instance* of it, built by edgeport from the user's values,
    checked against your `option` rules and converted to your fields' types.

    The instance registered serves every export and every loaded program of the
    process, possibly from several threads: keep per-export state out of ``self`` (the
    program and the options arrive as arguments).
    """

    name: ClassVar[str]  # what users type after --backend: an identifier, unique among installed backends
    options: ClassVar[type] = NoOptions  # the options class: a dataclass with a default for every field
    rules: ClassVar[PartitionRules] = PartitionRules()  # limits on the partitions handed to `compile`
    # Quantization schemes (edgeport.quantize.SCHEMES names) `quantizer` answers for.
    # None offered: the backend keeps its nodes float when a model is quantized.
    schemes: ClassVar[frozenset[str]] = frozenset()
    # Schemes it does not offer -> why (its hardware or toolchain's rule), said when it declines one.
    schemes_declined: ClassVar[dict[str, str]] = {}
    # The scheme `quantize="auto"` quantizes this backend's nodes with (one of
    # `schemes`). None: int8 when offered, else the first static scheme offered.
    default_scheme: ClassVar[str | None] = None

    @property
    def version(self) -> str:
        """Recorded with every artifact, so a program says what produced it. Read at
        export and by ``edgeport backends``: return your toolchain's version as a
        non-empty string (a class attribute will do; another value is refused when
        the backend is registered, or a computed one when it is first used); never
        raise."""
        return "0"

    def availability(self) -> Availability:
        """Whether this machine can compile for the backend and run it, and why not.

        Called by ``edgeport backends``, before an export that selects the backend
        (``can_compile`` False refuses it, naming ``why``), and before a program step of
        the backend is loaded (``can_run`` False refuses it unless the user asked for the
        torch reference). May be called often: keep it cheap (cache a probe of your
        SDK). Return an `Availability`; never raise (a raise is reported as
        "availability() raised ..."): say what is missing in ``why``, and label runs
        that are not on the target hardware with ``runs_on`` ("simulator",
        "reference (CPU)")."""
        return Availability(can_compile=True, can_run=True)

    def keep_ops(self) -> set[torch._ops.OpOverload]:
        """Aten ops to keep undecomposed at capture (e.g. ``aten.scaled_dot_product_attention.default``)
        because your toolchain has a kernel for the whole op. Called at capture, before
        any `support` question; return the same set every time. An op kept for a
        backend whose `support` declines every node of it is decomposed after all, so
        the other backends get the pieces they may know. Return a set of `OpOverload`s;
        the default keeps none."""
        return set()

    def prepare(self, program: ExportedProgram, options: Any) -> Any:
        """Work out, once per program, what `support` needs to know about all of it (the
        values folded to constants, a view of the graph at static sizes, a plan of
        fusions), instead of per node or in a cache of your own.

        Called once per program `support` is asked about, before its first question:
        each method's program as it is partitioned, of every export that selects the
        backend; also the graph a quantized export places nodes in, and the captured
        graph when an op of your `keep_ops` occurs in it. ``program`` is the whole
        core-ATen program `support` is then asked about; ``options`` the options
        instance. Do not change the program. Return anything (the default: None); it
        reaches every `support` call on this program as ``ctx.prepared``, and nothing
        else keeps it. An exception declines every node of the program for this backend,
        with the error as the reason; export warns of it, and the conformance kit counts
        it as a failure."""
        return None

    def support(self, node: Node, ctx: SupportContext) -> Support:
        """May this backend take ``node``? Asked once per compute node of every export
        that selects the backend, before any partition is compiled.

        ``node`` is a ``call_function`` node of the core-ATen graph (after
        decomposition, except the ops of `keep_ops`); ``node.meta["val"]`` is its output
        as a fake tensor (dtype and shape, dims possibly symbolic). ``ctx.program`` is
        the whole exported program, ``ctx.options`` the options instance, and
        ``ctx.constant(n)`` the value of an argument that is a weight or constant, and
        ``ctx.prepared`` what `prepare` returned for this program. Do not change the
        node or the graph.

        Return `Support.yes()` or `Support.no("reason")` with a reason a user can act
        on (the op, the dtype, the limit). Never raise: an exception is recorded as the
        reason and the node goes to another backend, but export warns of it and the
        conformance kit counts it as a failure. `compile` must then accept every
        node you said yes to (answer from the same table it uses)."""
        raise NotImplementedError(f"backend {self.name!r} must implement support()")

    def quantizer(self, scheme: Any, options: Any) -> Any:
        """Return a `torchao.quantization.pt2e` Quantizer annotating the core-ATen graph
        for `scheme` (an `edgeport.quantize.Scheme` named in `schemes`), or None to
        decline it, or raise `BackendError` naming the option that rules it out (the
        backend then declines its nodes with that reason). Called once per quantized
        export that selects the backend, only for a scheme in `schemes`, with the options
        instance. edgeport keeps only the annotations on nodes this backend owns; its
        `support` must then recognize the quantized patterns (dequantize -> op ->
        quantize) in the converted graph. Import torchao here, not at module import."""
        return None

    def compile(self, program: ExportedProgram, options: Any) -> Artifact:
        """Ahead of time: turn one partition into bytes your runtime can load. Called
        once per partition the backend was given, at export, on the exporting machine.

        ``program`` is a standalone `ExportedProgram` of the partition: its compute
        nodes are ones your `support` said yes to; lifted weights come first in its inputs (values in
        ``program.state_dict`` and ``program.constants``), then the user inputs, and it
        returns only user outputs. Node names are those of the whole program.
        ``options`` is the options instance. Do not change ``program``.

        Return an `Artifact` (bytes, a file suffix such as ".tflite", JSON metadata you
        get back at load; another suffix or metadata falls the partition back as a
        failed compile would). To refuse particular nodes, raise `DeclineNodes({node_name: reason})`:
        edgeport records the reasons and partitions again. Any other exception falls the
        partition back to portable torch with the error as its reason (``strict``
        export raises instead), and the conformance kit counts it as a failure."""
        raise NotImplementedError(f"backend {self.name!r} must implement compile()")

    def load(self, artifact: Artifact) -> Executable:
        """At run time: turn an artifact your `compile` produced into something that
        runs. Called once per artifact of a loaded program, before its first call, only
        when `availability` says ``can_run``; possibly in another process or years
        later, with your backend's then-current version.

        ``artifact.data`` and ``artifact.metadata`` are what `compile` returned (their
        checksums verified; the data as a read-only memoryview of the mapped program
        file: `edgeport.as_bytes` makes it ``bytes``); ``artifact.options`` is the options instance it was
        compiled with. Return an `Executable`: ``run(inputs)`` gets contiguous CPU
        tensors in the partition's input order and returns its outputs in order (tensors
        or numpy arrays the next call will not overwrite). Do the slow work (parsing,
        allocation) here, not in ``run``. Raise `BackendError` for what a user can fix
        (a missing driver), with a hint; anything else is reported as your load
        failing ("backend 'x' cannot load partition 0: ..."), a problem of the plugin
        or of the device."""
        raise NotImplementedError(f"backend {self.name!r} must implement load()")

    def tolerance(self, options: Any) -> float:
        """The largest relative error (max |yours - torch| / max |torch|) a partition
        compiled with ``options`` (an instance of the options class) may show and still
        be right.

        ``edgeport check`` holds every partition of this backend to it, and the
        conformance kit every case. The default, 1e-4, suits fp32 arithmetic; declare
        more for what your options make less exact (fp16 ~1e-2; weights compressed
        against a float reference ~1e-1). A quantized partition's rounding flips need
        no more: check allows them through `op_error`. Return a float; never raise: it
        is called on saved programs.
        """
        return FP32_TOLERANCE

    def op_error(self, options: Any) -> float:
        """How far one float op of a partition compiled with ``options`` may be from
        torch's, relative: the default, 1e-5, suits fp32 kernels; return
        ``edgeport.backend.FP16_OP_ERROR`` (2**-11) where values are computed in fp16.

        ``edgeport check`` uses it on quantized partitions only: before each rounding
        to integers it nudges the torch reference's values by up to this much, to learn
        how far rounding flips alone move the outputs, and lets the partition differ by
        about that much (devtools/rounding.py). Return a float; never raise: it is
        called on saved programs.
        """
        return FP32_OP_ERROR

    def accumulator_error(self, options: Any) -> float:
        """How far an integer product of two quantized values (a batched matmul of two
        activations) may be from exact before its output is rounded, in units of its
        accumulator (the product of its inputs' steps): the default, 0, suits a kernel
        that requantizes in fp32 (XNNPACK); return 1 where it requantizes in gemmlowp's
        fixed point (TFLite's own int8 kernels), which rounds twice.

        ``edgeport check`` calls it on quantized partitions only and moves each such
        product of the torch reference by this many units, either way, besides
        `op_error`'s nudge (devtools/rounding.py `accumulator_unit`). Return a float;
        never raise: it is called on saved programs.
        """
        return 0.0

    def merge(self, artifacts: Sequence[Artifact]) -> Artifact | None:
        """Optionally, one artifact holding several (the partitions of a program's
        methods, compiled with the same options), so what they share (weights) is stored
        and loaded once. Called at export, after every method is lowered, only when the
        program has several methods. Return None (the default) to keep them apart.
        ``load`` of the merged artifact must return an `Entries` whose ``entry(i)`` runs
        ``artifacts[i]``."""
        return None


class PrepareFailed(Exception):
    """A backend's `prepare` raised: every `support` question about that program raises
    this instead (the message says what `prepare` raised), so the support matrix records
    the plugin's bug as a fault as well as declining each node with it."""


def support_question(backend: Backend, program: ExportedProgram, options: Any) -> Callable[[Node], Support]:
    """``backend.support`` for the nodes of ``program``, after its `prepare` (once); after
    a `prepare` that raised, each question raises `PrepareFailed` with that error."""
    try:
        ctx = SupportContext(program, options, backend.prepare(program, options))
    except Exception as exc:  # noqa: BLE001 - one backend's bug must not stop an export
        message = f"prepare() raised {type(exc).__name__}: {exc}"

        def refuse(node: Node) -> Support:
            raise PrepareFailed(message)

        return refuse
    return lambda node: backend.support(node, ctx)


# -- options: how a backend declares them, and how edgeport checks them --------------

_RULE = "edgeport.option"  # the key of an `OptionRule` in a dataclass field's metadata


@dataclass(frozen=True)
class OptionRule:
    """The values one option accepts, declared with `option`.

    ``choices`` is a tuple, or a function returning the values when they are known
    only to the toolchain (called at export, never at import). Strings match choices
    regardless of case and are stored as the choice is spelled.
    """

    choices: tuple[Any, ...] | Callable[[], Iterable[Any]] | None = None
    at_least: float | None = None
    at_most: float | None = None


def option(default: Any, *, choices: tuple[Any, ...] | Callable[[], Iterable[Any]] | None = None,
           at_least: float | None = None, at_most: float | None = None) -> Any:
    """A field of a backend's options dataclass that says which values it accepts:

        @dataclass(frozen=True)
        class MyOptions:
            precision: str = edgeport.option("fp32", choices=("fp32", "fp16"))
            threads: int = edgeport.option(0, at_least=0)  # 0 = every core

    A value outside them is refused at export, before any work, with the valid ones
    listed. A rule across fields belongs in the dataclass's ``__post_init__`` (raise
    `edgeport.BackendError` with a hint).
    """
    return field(default=default, metadata={_RULE: OptionRule(choices, at_least, at_most)})


def validate_options(backend: Backend, options: Any, *, toolchain_choices: bool = True,
                     flag: str = "--option") -> Any:
    """``options`` (an instance of ``backend.options``) checked against each field's
    `option` rule, with string choices spelled as declared; raises `BackendError`
    naming the option and its valid values, with a hint to set it by ``flag`` (the
    command line's; pytest's is ``--edgeport-option``). ``toolchain_choices=False``
    skips the choices only a toolchain can list (loading a saved program must not import one)."""
    canonical = {}
    for f in dataclasses.fields(options):
        rule = f.metadata.get(_RULE)
        if rule is not None and (toolchain_choices or not callable(rule.choices)):
            canonical[f.name] = _check_rule(backend, f, rule, getattr(options, f.name), flag)
    return dataclasses.replace(options, **canonical)


def _check_rule(backend: Backend, f: dataclasses.Field, rule: OptionRule, value: Any, flag: str) -> Any:
    from .errors import BackendError

    hint = _option_hint(backend, f, flag)
    where = f"{backend.name}.{f.name}"
    if rule.choices is not None:
        try:
            choices = tuple(rule.choices() if callable(rule.choices) else rule.choices)
        except Exception as exc:
            raise BackendError(f"cannot list the valid values of option {where}: {type(exc).__name__}: {exc}",
                               hint=f"a bug in backend {backend.name!r}: report it to its authors") from exc
        for choice in choices:
            if value == choice or (isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower()):
                return choice
        raise BackendError(f"option {where}={value!r} is not one of: {', '.join(map(str, choices))}", hint=hint)
    if rule.at_least is None and rule.at_most is None:
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BackendError(f"option {where} expects a number, got {value!r}", hint=hint)
    if (rule.at_least is not None and value < rule.at_least) or (rule.at_most is not None and value > rule.at_most):
        bounds = [f"at least {rule.at_least}"] if rule.at_least is not None else []
        bounds += [f"at most {rule.at_most}"] if rule.at_most is not None else []
        raise BackendError(f"option {where}={value!r} is out of range: it must be {' and '.join(bounds)}", hint=hint)
    return value


def _option_hint(backend: Backend, f: dataclasses.Field, flag: str) -> str:
    """How to set option ``f`` right: its default, and the flag that sets it."""
    return f"its default is {f.default!r}; set it with {flag} {backend.name}.{f.name}=VALUE (Python: options={{...}})"


def options_from_dict(backend: Backend, values: dict[str, Any] | None, flag: str | None = None) -> Any:
    """Build a backend's options dataclass from plain values (e.g. from the CLI or a
    manifest), converting strings to each field's type; unknown keys are an error. With
    ``flag`` (the values are the user's, not a manifest's), a value of the wrong type is
    hinted at with its default and that flag, as a value out of its range is."""
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
    converted = {}
    for key, value in (values or {}).items():
        try:
            converted[key] = _convert(backend, fields[key], value)
        except BackendError as exc:
            if exc.hint or flag is None:
                raise
            raise BackendError(str(exc), hint=_option_hint(backend, fields[key], flag)) from None
    try:
        return cls(**converted)
    except BackendError:
        raise
    except Exception as exc:  # a __post_init__ rule raising ValueError, as dataclasses' own checks do
        given = ", ".join(f"{k}={v!r}" for k, v in converted.items()) or "its defaults"
        raise BackendError(f"backend {backend.name!r} refused the options {given}: {type(exc).__name__}: {exc}",
                           hint=f"change them (--option {backend.name}.KEY=VALUE); if they are valid, the backend's "
                                "options class is at fault: report it to its authors") from exc


def options_to_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


def _convert(backend: Backend, f: dataclasses.Field, value: Any) -> Any:
    """``value`` as field ``f`` holds it: text (the CLI's, a manifest's) converted to the
    field's plain type, int, float, bool or str, also where the field may be None
    (``int | None``, ``Optional[int]``: "none" is None); a value of another type refused
    (``threads=1.5`` used to export and then fail at load). A ``list[int]`` or
    ``tuple[int, ...]`` field (of any plain type) takes comma-separated text
    ("1,2,3"; "" is empty) or a list or tuple, each element converted so; it got the
    text as given ("1,2,3", a string). Fields of other types take their values as given."""
    from .errors import BackendError

    field_type = _plain_type(f.type)
    if field_type.kind is None:
        return value
    if field_type.optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    expects = f"option {backend.name}.{f.name} expects {field_type.describe()}"
    if field_type.container is None:
        return _convert_plain(field_type.kind, value, expects)
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")] if value.strip() else []
        if "" in items:  # "a,,b" or a trailing comma: a slip, not an empty element
            raise BackendError(f"{expects}, got {value!r}: element {items.index('') + 1} is empty")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise BackendError(f"{expects}, got {value!r}")
    converted = []
    for position, item in enumerate(items, 1):
        try:
            converted.append(_convert_plain(field_type.kind, item, expects))
        except BackendError:
            raise BackendError(f"{expects}, got {value!r}: element {position} is {item!r}") from None
    return field_type.container(converted)


def _convert_plain(kind: str, value: Any, expects: str) -> Any:
    """``value`` (text, or a value of the type) as an int, float, bool or str."""
    from .errors import BackendError

    if not isinstance(value, str) or kind == "str":
        if type(value) not in _PLAIN_TYPES[kind]:
            raise BackendError(f"{expects}, got {value!r}")
        return _finite(value, expects)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return _finite(float(value), expects)
        if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(value)
        return value.lower() in ("1", "true", "yes", "on")
    except ValueError:
        raise BackendError(f"{expects}, got {value!r}") from None


def _finite(value: Any, expects: str) -> Any:
    """``value``, unless it is a float NaN or infinity: the manifest stores options as
    JSON, which holds neither (``scale=nan`` used to pass here and fail at save)."""
    from .errors import BackendError

    if isinstance(value, float) and not math.isfinite(value):
        raise BackendError(f"{expects} that is a finite number, got {value!r}")
    return value


# The values each plain field type takes as they are (a float field takes 1 as well as 1.0).
_PLAIN_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


@dataclasses.dataclass(frozen=True)
class _FieldType:
    """What `options_from_dict` converts a field's values to."""

    kind: str | None  # int, float, bool or str; None: another type, taken as given
    optional: bool = False  # None allowed
    container: type | None = None  # list or tuple of `kind`, or None for one value

    def describe(self) -> str:
        if self.container is None:
            return self.kind + (" or None" if self.optional else "")
        what = f"a {self.container.__name__} of {self.kind} (comma-separated text, or a list or tuple)"
        return what + (", or None" if self.optional else "")


def _plain_type(annotation: Any) -> _FieldType:
    """The field type of an annotation, written as a type or as text (``from __future__
    import annotations``): "int", "int | None", "Optional[int]", "None | int",
    "list[int]", "tuple[str, ...]" (a fixed-length tuple is another type)."""
    text = annotation if isinstance(annotation, str) else str(annotation)
    if isinstance(annotation, type):
        text = annotation.__name__
    text = text.replace("typing.", "").replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1] + "|None"
    parts = [p for p in text.split("|") if p]
    optional = "None" in parts or "NoneType" in parts
    rest = [p for p in parts if p not in ("None", "NoneType")]
    if len(rest) != 1:
        return _FieldType(None)
    (one,) = rest
    if one in _PLAIN_TYPES:
        return _FieldType(one, optional)
    for container, prefixes, suffix in ((list, ("list[", "List["), "]"), (tuple, ("tuple[", "Tuple["), ",...]")):
        for prefix in prefixes:
            if one.startswith(prefix) and one.endswith(suffix) and one[len(prefix):-len(suffix)] in _PLAIN_TYPES:
                return _FieldType(one[len(prefix):-len(suffix)], optional, container)
    return _FieldType(None)


