"""Running a program: load each artifact once, then walk the plan for every call.

Per call the runtime checks inputs against the method's spec, runs the steps in order,
drops every intermediate value after its last use, and writes mutated state back when
the call finishes. Everything that can be decided once (which values die after which
step, how to check each input) is decided at load time, to keep calls cheap.

Threads: one Runtime may be called from several threads at once. Each loaded step runs
one call at a time unless its executable says it is ``thread_safe`` (a LiteRT
interpreter is not: its buffers are shared by every call). A method that reads or
writes program state holds the program's state lock for the whole call, so a call
reads the state, runs and writes it back with no other stateful call in between; the
lock is per program, not per method, because methods share state (prefill and decode
share a KV cache). Stateless methods take no program-wide lock.

Values: torch tensors where torch is installed, numpy arrays where it is not
(`edgeport.values`); this module imports no torch, and portable steps import it when loaded.

The direct call (`Runtime.call`, what `Program.__call__` runs): a stateless method that is
one delegate step taking the method's inputs and giving its outputs (a whole model in one
cpu partition) skips the plan walk when each input already is what the step takes.
Measured on MobileNetV2 int8 (issue 14, bench/README.md): on a shared machine the Python a
call runs after a few ms of `invoke` meets caches other processes emptied, so the walk cost
2.4-3.5% of the call over a bare LiteRT interpreter at 1 thread, not its 28 µs warm; the
direct call costs 1.6-2.9%, and took the call from 0.98x to 0.965x ExecuTorch's in one run
(`quantize.py --clock cpu --walk`). Inputs that do not fit exactly take the walk, whose
checks raise the one clear InputError.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .arrays import initial_state, torch_installed
from .backend import Executable
from .delegates import executable_of, load_step, run_label
from .errors import EdgeportError, ExecutionError, InputError, ProgramError, UnknownBackendError, described
from .finite_inputs import finite_check, quantized_positions
from .manifest import Manifest, MethodPlan, Step, TensorSpec
from .mapped_file import Buffer, release
from .output_tree import restore_structure
from .plugins import Registry, registry_or_default
from .state_rows import InPlaceInputs, apply_row_updates, check_row_updates, place_state, row_update_values
from .torch_steps import portable_steps
from .values import NumpyValues, TorchValues, Values, dtype_and_shape


TORCH_REFERENCE = "torch reference"  # the label of a delegate step run as its partition's torch program


@dataclass(frozen=True)
class StepTiming:
    index: int
    kind: str  # "delegate" or "portable"
    backend: str  # backend name, or "portable"
    label: str  # how it ran here: "cpu", "qualcomm: simulator", "coreml: torch reference", ...
    ms: float


@dataclass
class RunResult:
    outputs: Any
    steps: list[StepTiming] = field(default_factory=list)  # empty unless profiled
    total_ms: float = 0.0


@dataclass(frozen=True)
class _LoadedStep:
    step: Step
    executable: Executable
    backend: str
    label: str
    frees: tuple[str, ...]  # values whose last use is this step
    guard: contextlib.AbstractContextManager[Any]  # held while the executable runs
    # a delegate's outputs as its partition computes them: (index, spec, test of a value)
    expected: tuple[tuple[int, TensorSpec, Callable[[Any], bool]], ...] = ()


def _guard(executable: Executable) -> contextlib.AbstractContextManager[Any]:
    """A lock of its own for an executable, unless it says it is ``thread_safe``:
    the safe default for a plugin that never thought about threads."""
    return contextlib.nullcontext() if getattr(executable, "thread_safe", False) else threading.Lock()


class Runtime:
    def __init__(self, manifest: Manifest, files: Mapping[str, Buffer], *, reference: bool = False,
                 registry: Registry | None = None, values: Values | None = None) -> None:
        self._manifest = manifest
        self._files = files
        self._registry = registry_or_default(registry)
        self._reference = reference
        self._values: Values = values or values_of("auto", manifest)
        self.state = {fqn: _read_state(self._values, fqn, entry, files) for fqn, entry in manifest.state.items()}
        self._state_lock = threading.Lock()  # one per program: every method shares its state
        self._loaded: dict[str, tuple[Any, Any]] = {}  # artifact path -> (what its backend loaded, its lock)
        self._shared_tensors: dict[Any, Any] = {}  # tensors torch steps share (portable.stored_program)
        self._finite = {name: finite_check(plan, quantized_positions(manifest.report.get(name, {}), plan))
                        for name, plan in manifest.methods.items()}  # inputs quantized at entry (finite_inputs.py)
        self._methods = {name: self._load_method(plan) for name, plan in manifest.methods.items()}
        self._direct = {name: _direct_call(plan, steps, self._values, self._finite[name])
                        for name, (plan, steps, _) in self._methods.items()}
        self._prefix_views: dict[tuple[str, str], tuple[Any, int, Any]] = {}  # (method, value) -> (state, rows, view)

    # -- loading ------------------------------------------------------------------

    def _load_method(self, plan: MethodPlan) -> tuple[MethodPlan, list[_LoadedStep], Callable]:
        last_use: dict[str, int] = {}
        for i, step in enumerate(plan.steps):
            for name in step.inputs:
                last_use[name] = i
        check_row_updates(plan, self.state)
        kept = set(plan.output_values) | set(plan.state_writes) | row_update_values(plan)
        frees: list[list[str]] = [[] for _ in plan.steps]
        for name, i in last_use.items():
            if name not in kept:
                frees[i].append(name)
        steps = [self._load_step(plan, step, tuple(frees[i])) for i, step in enumerate(plan.steps)]
        return plan, steps, _input_checker(plan, self._values, self._finite[plan.name])

    def _load_step(self, plan: MethodPlan, step: Step, frees: tuple[str, ...]) -> _LoadedStep:
        executable, backend, label, guard = self._open_step(plan, step)
        return _LoadedStep(step, executable, backend, label, frees, guard, self._expected_outputs(plan, step))

    def _expected_outputs(self, plan: MethodPlan, step: Step) -> tuple[tuple[int, TensorSpec, Callable[[Any], bool]], ...]:
        """What a delegate step's outputs must be, from the placement report's boundary
        values (checked against the method's specs at load, plan_check.py): a plugin's
        run() returning another dtype or shape is named at its step, not passed on to
        broadcast in a torch step or to fail in the next backend's."""
        if step.kind != "delegate":
            return ()
        facts = self._manifest.report.get(plan.name, {}).get("values", {})
        expected = []
        for index, name in enumerate(step.outputs):
            if name in facts:
                spec = TensorSpec(name, facts[name]["dtype"], tuple(facts[name]["shape"]))
                if (test := self._values.conforms(spec)) is not None:
                    expected.append((index, spec, test))
        return tuple(expected)

    def _open_step(self, plan: MethodPlan, step: Step) -> tuple[Executable, str, str, Any]:
        """The step's executable, the backend it belongs to, how it runs here, and the
        lock its calls take (one per loaded artifact: the entries of a merged artifact
        share one interpreter)."""
        if step.kind == "portable":
            executable = self._portable(step.program)
            return executable, "portable", "portable", _guard(executable)
        name = step.backend
        why = self._why_cannot_run(name)
        if why is None:
            backend = self._registry.get(name)
            if step.artifact not in self._loaded:  # once per path: a merged artifact serves several steps
                loaded = load_step(self._manifest, self._files, step, backend)
                self._loaded[step.artifact] = loaded, _guard(loaded)
            loaded, guard = self._loaded[step.artifact]
            return executable_of(loaded, step), name, run_label(name, backend.availability()), guard
        if self._reference and step.reference:
            executable = self._portable(step.reference)
            return executable, name, f"{name}: {TORCH_REFERENCE}", _guard(executable)
        if step.reference and not self._reference:
            hint = "run its torch reference instead with --reference (edgeport.load(path, reference=True))"
        else:  # --reference would fail the same way: the program keeps no torch program of the step
            hint = (f"run it where {name} runs, or re-export with keep_reference=True (--keep-reference) and run "
                    "its torch reference with --reference")
        raise ExecutionError(
            f"partition {step.partition} of {plan.name!r} needs backend {name!r}, which cannot run here: {why}",
            hint=hint,
        )

    def _why_cannot_run(self, name: str) -> str | None:
        try:
            availability = self._registry.get(name).availability()
        except UnknownBackendError as exc:
            if exc.disabled:
                return f"{exc} ({exc.hint})"
            return exc.hint if exc.broken else f"it is not installed ({exc}; {exc.hint})"
        return None if availability.can_run else (availability.why or "its backend says it cannot run here")

    def _portable(self, prefix: str) -> Executable:
        from .portable import PortableExecutable, stored_program  # torch: `program.load` checked it is here

        try:
            return PortableExecutable(stored_program(self._files, prefix, self._shared_tensors))
        except Exception as exc:  # a damaged graph must not surface as a torch traceback
            raise ProgramError(f"the torch program {prefix} cannot be read: {type(exc).__name__}: {exc}") from None

    # -- running --------------------------------------------------------------------

    def call(self, method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """The outputs of one call of ``method``: by its direct call where it has one and
        the inputs fit it, else as `run` gives them."""
        direct = self._direct.get(method)
        if direct is not None and not kwargs:
            outputs = direct(args)
            if outputs is not _NOT_DIRECT:
                return outputs
        return self.run(method, args, kwargs).outputs

    def _method(self, method: str) -> tuple[MethodPlan, list[_LoadedStep], Callable]:
        """The loaded method; a name the program lacks is the caller's mistake, an InputError."""
        loaded = self._methods.get(method)
        if loaded is None:
            raise InputError(f"program has no method {method!r}; it has {', '.join(self._methods)}",
                             hint="`edgeport explain PROGRAM` lists each method's inputs")
        return loaded

    def run(self, method: str, args: Sequence[Any], kwargs: Mapping[str, Any], profile: bool = False) -> RunResult:
        plan, steps, check = self._method(method)
        start = time.perf_counter()
        values: dict[str, Any] = dict(zip(plan.input_values, check(args, kwargs)))
        timings: list[StepTiming] = []
        if plan.state_reads or plan.state_writes or plan.row_updates:
            with self._state_lock:  # read state, run, write it back: one call at a time
                values.update({value: self.state[fqn] for value, fqn in plan.state_reads.items()})
                for p in plan.state_prefixes:  # a view of the state's first rows (state_rows.py)
                    values[p.value] = self._prefix_view(method, p.value, values[p.value],
                                                        values[p.length_of].shape[p.length_dim])
                self._run_steps(steps, values, timings if profile else None)
                # rows first: positions outside a state fail there, and the call then changes no state
                apply_row_updates(self.state, plan.row_updates, values)
                for value, fqn in plan.state_writes.items():
                    self.state[fqn] = values[value]
        else:
            self._run_steps(steps, values, timings if profile else None)
        outputs = [values[n] for n in plan.output_values]
        result = restore_structure(outputs, plan.out_spec)
        return RunResult(result, timings, (time.perf_counter() - start) * 1e3)

    def _prefix_view(self, method: str, value: str, state: Any, rows: int) -> Any:
        """``state[:rows]``, the same view object while neither changes: an executable
        that found it in place once then knows it by identity (`CompiledExecutable`)."""
        cached = self._prefix_views.get((method, value))
        if cached is not None and cached[0] is state and cached[1] == rows:
            return cached[2]
        view = state[:rows]
        self._prefix_views[(method, value)] = (state, rows, view)
        return view

    def place_state(self, method: str) -> list[str]:
        """Keep the state ``method`` reads inside its delegates' own input buffers (where
        they offer them), so calling ``method`` copies none of it; returns the states
        moved. Worth it for the method called most often, e.g. an LLM's "decode"."""
        plan, steps, _ = self._method(method)
        fully_written = {fqn for p, _, _ in self._methods.values() for fqn in p.state_writes.values()}
        return place_state(plan, [(s.step.inputs, s.executable) for s in steps], self.state, fully_written)

    def input_buffers(self, method: str) -> list[Any | None]:
        """Each input of ``method`` as the delegate's own storage, where it has one: a
        tensor (or array) the delegate reads in place, so a call given it copies nothing
        (None for an input without one). Only a method that is one delegate step with
        static input shapes (what the direct call runs) has them, and only where its
        executable offers them (`InPlaceInputs`). The buffer holds whatever the last
        call was given for that input; one call at a time writes or reads it."""
        plan, steps, _ = self._method(method)
        executable = steps[0].executable if self._direct.get(method) is not None else None
        if not isinstance(executable, InPlaceInputs):
            return [None] * len(plan.inputs)
        buffers: list[Any | None] = []
        for index, spec in enumerate(plan.inputs):
            found = executable.input_buffer(index)
            value = None if found is None else self._values.step_output(found)
            fits = self._values.fits(spec)
            buffers.append(value if value is not None and fits is not None and fits(value) else None)
        return buffers

    def step_labels(self, method: str) -> list[str]:
        return [s.label for s in self._methods[method][1]]

    def _run_steps(self, steps: Sequence[_LoadedStep], values: dict[str, Any], timings: list[StepTiming] | None) -> None:
        """Run ``steps`` in order on ``values`` (name -> value, updated in place); with
        ``timings``, append each step's time to it."""
        for i, loaded in enumerate(steps):
            t0 = time.perf_counter() if timings is not None else 0.0
            inputs = [values[n] for n in loaded.step.inputs]
            with loaded.guard:
                results = _run_step(i, loaded, inputs)
            _check_output_count(i, loaded, results)
            for name, value in zip(loaded.step.outputs, results):
                values[name] = self._values.step_output(value)
            _check_outputs(i, loaded, [values[name] for name in loaded.step.outputs])
            for name in loaded.frees:
                del values[name]
            if timings is not None:
                ms = (time.perf_counter() - t0) * 1e3
                timings.append(StepTiming(i, loaded.step.kind, loaded.backend, loaded.label, ms))


def _run_step(index: int, loaded: _LoadedStep, inputs: list[Any]) -> Any:
    """The step's outputs; what its executable raises other than an edgeport error is one
    ExecutionError naming the step (torch's own error in a portable step, a plugin's
    bug) instead of an "internal error" of edgeport's."""
    try:
        return loaded.executable.run(inputs)
    except EdgeportError:
        raise
    except Exception as exc:
        what = ("torch raised running the model's own ops" if loaded.step.kind == "portable"
                else f"backend {loaded.backend!r} raised")
        raise ExecutionError(f"step {index} ({loaded.label}) failed: {described(exc)}",
                             hint=f"{what}; --debug (EDGEPORT_RAISE_ERRORS=1) shows the traceback") from exc


def _check_outputs(index: int, loaded: _LoadedStep, outputs: Sequence[Any]) -> None:
    for k, spec, test in loaded.expected:
        if not test(outputs[k]):
            raise ExecutionError(
                f"step {index} ({loaded.label}) returned output {k} ({spec.name}) as {dtype_and_shape(outputs[k])}; "
                f"its partition computes {spec.dtype} {list(spec.shape)}",
                hint=_contract_hint(loaded, "return each output in its partition's dtype and shape"))


def _check_output_count(index: int, loaded: _LoadedStep, results: Sequence[Any]) -> None:
    if not isinstance(results, (list, tuple)):
        raise ExecutionError(f"step {index} ({loaded.label}) returned {type(results).__name__}, not a list of outputs",
                             hint=_contract_hint(loaded, "return a list of arrays"))
    if len(results) != len(loaded.step.outputs):
        raise ExecutionError(
            f"step {index} ({loaded.label}) returned {len(results)} outputs, expected {len(loaded.step.outputs)}",
            hint=_contract_hint(loaded, "return one array per output of its partition, in order"),
        )


def _contract_hint(loaded: _LoadedStep, must: str) -> str:
    """What to do about a step whose run() broke the executable contract: the user cannot
    fix it, only report it or leave the backend out; its author reads what run() must do."""
    return (f"a bug of backend {loaded.backend!r}: its executable's run() must {must}; report it to the "
            f"plugin's authors, or export without {loaded.backend}")


_NOT_DIRECT = object()  # what a direct call returns for inputs it does not take as they are


def _direct_call(plan: MethodPlan, steps: Sequence[_LoadedStep], kind: Values,
                 finite: Callable[[Sequence[Any]], None] | None) -> Callable[[Sequence[Any]], Any] | None:
    """The direct call of a method that is one delegate step (module docstring), or None.

    It runs the step on the positional inputs when each fits its spec exactly
    (`Values.fits`: type, dtype, static shape, contiguous) and returns the outputs in
    the method's structure; otherwise it returns ``_NOT_DIRECT``, having run nothing.
    An executable that says ``takes_numpy`` gets a torch input as the numpy array over
    its memory, tested in numpy: one torch call per input instead of the eight of the
    tests and `as_numpy`, each a cache miss on a loaded machine (0.6% of MobileNetV2
    int8's call at 1 thread, bench/README.md).
    """
    if len(steps) != 1 or plan.state_reads or plan.state_writes or plan.row_updates:
        return None
    (loaded,) = steps
    step = loaded.step
    if step.kind != "delegate" or step.inputs != plan.input_values or step.outputs != plan.output_values:
        return None
    as_arrays = isinstance(kind, TorchValues) and getattr(loaded.executable, "takes_numpy", False)
    tests = [(NumpyValues() if as_arrays else kind).fits(spec) for spec in plan.inputs]
    if any(test is None for test in tests):
        return None
    count, guard, output, structure = len(tests), loaded.guard, kind.step_output, plan.out_spec

    def call(args: Sequence[Any]) -> Any:
        if len(args) != count:
            return _NOT_DIRECT
        if as_arrays:
            try:  # a CPU tensor that needs no grad has a numpy view; anything else takes the walk
                args = [arg.numpy() for arg in args]
            except (AttributeError, RuntimeError, TypeError):
                return _NOT_DIRECT
        if not all(test(arg) for test, arg in zip(tests, args)):
            return _NOT_DIRECT
        if finite is not None:
            finite(args)
        with guard:
            results = _run_step(0, loaded, args)
        _check_output_count(0, loaded, results)
        outputs = [output(value) for value in results]
        _check_outputs(0, loaded, outputs)
        return restore_structure(outputs, structure)

    return call


def values_of(arrays: str, manifest: Manifest) -> Values:
    """The values a program runs with (`Program.runtime`): "auto" is torch tensors where
    torch is installed, numpy arrays where not; "numpy" is numpy arrays, for a program
    without portable steps (they run in torch)."""
    if arrays == "numpy":
        steps = portable_steps(manifest)
        if steps:
            where = ", ".join(f"{s.method} step {s.index}" for s in steps)
            raise ExecutionError(f"a program with portable steps ({where}) runs on torch values, not numpy arrays",
                                 hint="use arrays='auto'")
        return NumpyValues()
    if arrays != "auto":
        raise InputError(f"arrays must be 'auto' or 'numpy', got {arrays!r}")
    return TorchValues() if torch_installed() else NumpyValues()


def _read_state(kind: Values, fqn: str, entry: dict[str, Any], files: Mapping[str, Buffer]) -> Any:
    """State as a value the program owns (it changes as methods run), its file's mapped
    pages (a state stored as zeros has no file) let go once copied."""
    try:
        value = kind.state(initial_state(entry, files), entry)
    except (KeyError, ValueError) as exc:
        raise ProgramError(f"program state {fqn!r} is damaged: {exc}") from None
    except MemoryError:
        raise ProgramError(f"program state {fqn!r} ({entry['dtype']}{entry['shape']}) does not fit in this "
                           "machine's memory") from None
    if "file" in entry:
        release(files[entry["file"]])
    return value


def check_inputs(plan: MethodPlan, inputs: Sequence[Any]) -> list[Any]:
    """``inputs`` as ``plan``'s method takes them (torch tensors where torch is installed),
    or the InputError a call would raise: for a caller that hands inputs on to something
    other than the runtime (`edgeport check` runs each partition with them)."""
    return _input_checker(plan, TorchValues() if torch_installed() else NumpyValues(), None)(inputs, {})


def _input_checker(plan: MethodPlan, kind: Values, finite: Callable[[Sequence[Any]], None] | None,
                   ) -> Callable[[Sequence[Any], Mapping[str, Any]], list[Any]]:
    """Build the per-call input check of a method once, from its spec and ``finite``
    (the check of the inputs it quantizes at entry, finite_inputs.py); inputs come out as
    ``kind``'s values (torch tensors, or numpy arrays where torch is not installed)."""
    specs = plan.inputs
    names = [spec.name for spec in specs]

    def check(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
        flat = kind.flatten(args, kwargs, names)
        if len(flat) != len(specs):
            raise InputError(f"method {plan.name!r} takes {len(specs)} input(s) ({_describe(specs)}), got {len(flat)}",
                             hint="pass them in that order, or by name")
        sizes: dict[str, int] = {}
        out = []
        for i, (value, spec) in enumerate(zip(flat, specs)):
            value = kind.input(value, i, spec)
            if value.ndim != len(spec.shape):
                raise InputError(f"input {i} ({spec.name!r}) must have shape {_shape(spec)}, got {list(value.shape)}",
                                 hint=f"give it {len(spec.shape)} dims (reshape it)")
            for axis, (dim, size) in enumerate(zip(spec.shape, value.shape)):
                if isinstance(dim, int):
                    if dim != size:
                        raise InputError(
                            f"input {i} ({spec.name!r}) must have shape {_shape(spec)}, got {list(value.shape)}",
                            hint=f"dim {axis} is static ({dim}); export with dynamic_shapes to vary it",
                        )
                    continue
                if sizes.setdefault(dim, size) != size:
                    raise InputError(f"dim {dim!r} is {sizes[dim]} in one input and {size} in input {i} ({spec.name!r})",
                                     hint=f"the inputs were exported with one size for {dim!r}: give them equal sizes")
                low, high = plan.symbols.get(dim, (0, None))
                if size < low or (high is not None and size > high):
                    raise InputError(
                        f"input {i} ({spec.name!r}) dim {axis} is {size}, outside its range [{low}, {high}]",
                        hint="export with a wider range for it (--dynamic, or dynamic_shapes= in Python)",
                    )
            out.append(kind.contiguous(value))
        if finite is not None:
            finite(out)
        return out

    return check


def _shape(spec: TensorSpec) -> str:
    return "[" + ", ".join(str(d) for d in spec.shape) + "]"


def _describe(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name}: {s.dtype}{_shape(s)}" for s in specs) or "none"
