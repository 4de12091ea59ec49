"""The conformance kit: the whole case library run on one backend, each case given a verdict.

`pytest --edgeport-backend NAME` (the pytest plugin in ``pytest_edgeport``),
`edgeport conformance NAME` and the built-in backends' own tests all run cases through
`run_kit_case`, so a vendor's CI and ours judge a backend the same way:

- passed:   the backend took the case's nodes (all of them, or some with a reason for
            every other), compiled them, and its answer is within tolerance;
- declined: the backend took no node of the case (each node carries its reason), or it
            offers no quantization scheme the case needs;
- not run:  compiled, but this machine cannot run the backend (coreml off macOS);
- failed:   export raised, the backend's support() or prepare() raised, a partition it
            accepted failed to compile (and fell back to portable torch), running
            raised, the run side needs torch (a program of its steps only is run again
            in a process without torch, `without_torch.py`), the answer is off, or the
            case did not finish within its time limit (`time_limit.py`: a hung
            compile(), load() or run() fails its case, and the run goes on).

A run in which no case passed and none is not-run shows nothing of the backend works
(`nothing_passed`): the CLI and the pytest plugin fail it, though no case failed.

"Off" is judged at the backend's own declared tolerance (`Backend.tolerance(options)`,
never looser than the case's): max |backend - eager| / max |eager| for float cases. A
quantized case is compared with its fake-quantized reference instead, in output
quantization steps for int8 and relatively for dynamic schemes (`quantized_cases.py`).
A compile that refuses particular nodes with `DeclineNodes` is a decline, not a failure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from ..backend import Availability, Backend, options_from_dict, validate_options
from ..contract import checked_tolerance, checked_version
from ..errors import BackendError, InputError
from ..plugins import Registry, registry_or_default
from . import CASES, Case, CaseResult, run_case
from .quantized_cases import QUANTIZED_CASES, QuantizedCase, QuantizedCaseResult, run_quantized_case
from .time_limit import CASE_TIME_LIMIT, Hang, checked_time_limit, left_behind, run_within, step
from .without_torch import TorchFreeRuns

KitCase = Case | QuantizedCase


class Verdict(str, enum.Enum):
    PASSED = "passed"
    DECLINED = "declined"
    NOT_RUN = "not-run"
    FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    """One case on one backend: the verdict and what it rests on.

    ``dtype`` is what the case computes in: its inputs' dtypes for a float case
    ("float32", "int64"), the scheme for a quantized one ("int8"). ``error`` and
    ``tolerance`` share ``unit``: "relative" (to eager, or to the reference for dynamic
    schemes) or "steps" (int8 output quantization steps). ``error`` is None when the
    case did not run, and infinite when an output's dtype or shape is wrong, or it has a
    NaN or infinity where eager has a number (``message`` says which output, and how).
    """

    case: str
    family: str  # "float" or "quantized"
    dtype: str
    verdict: Verdict
    delegated: float  # share of the case's compute nodes the backend took
    delegated_ops: tuple[str, ...] = ()
    declined: dict[str, str] = field(default_factory=dict)  # op left to portable -> the backend's reason
    error: float | None = None
    tolerance: float | None = None
    unit: str = "relative"
    message: str = ""  # the verdict in one line

    @property
    def why(self) -> str:
        """What a table's "why" column shows: a failed case's failure (not the reasons
        for the nodes left to portable, when it took some), else each declined op's
        reason, or the verdict line when there are none."""
        declined = declined_text(self.declined)
        return self.message if self.verdict is Verdict.FAILED or not declined else declined


def declined_text(reasons: Mapping[str, str]) -> str:
    """Each declined op with its reason, "op: reason; ...". A reason that already begins
    with its op (the templates writing-a-backend.md shows begin "{op}: ") is not
    prefixed again: "aten.mean.dim: aten.mean.dim: input dtype int64" said it twice."""
    return "; ".join(why if why.startswith(f"{op}:") else f"{op}: {why}" for op, why in reasons.items())


@dataclass(frozen=True)
class KitRun:
    """Every case of one kit run, with what it ran on."""

    backend: str
    version: str
    options: dict[str, Any]
    availability: Availability
    outcomes: tuple[Outcome, ...]

    def count(self, verdict: Verdict) -> int:
        return sum(o.verdict is verdict for o in self.outcomes)

    @property
    def proves_nothing(self) -> str:
        """Why the run shows nothing works, or "": `nothing_passed` of its outcomes."""
        return nothing_passed(self.backend, self.outcomes)


def nothing_passed(backend: str, outcomes: Iterable[Outcome]) -> str:
    """Why a run of ``outcomes`` shows nothing of ``backend`` works, or "" when it shows
    something: no case passed and none is not-run. A plugin whose support() declines
    every node got a green run; a backend that compiles here but cannot run (not-run)
    has shown what it compiles, and its run side is for a machine it runs on."""
    outcomes = list(outcomes)
    if not outcomes or any(o.verdict in (Verdict.PASSED, Verdict.NOT_RUN) for o in outcomes):
        return ""
    failed = sum(o.verdict is Verdict.FAILED for o in outcomes)
    return (f"no case passed: {backend} declined {len(outcomes) - failed} and failed {failed} of "
            f"{len(outcomes)}, so this run shows nothing of it works (a plugin declining every node would pass "
            "it); its support() must take what it runs")


def kit_cases() -> list[KitCase]:
    """Every case the kit runs, in a stable order: the float library, then the quantized."""
    return [*CASES, *QUANTIZED_CASES]


def backend_named(name: str, registry: Registry | None = None) -> Backend:
    """The installed backend called ``name`` (or an alias of it). Backend names are
    identifiers, so dashes read as underscores: ``numpy-npu`` finds ``numpy_npu``."""
    registry = registry_or_default(registry)
    known = {*registry.entries(), *(a for e in registry.entries().values() for a in e.aliases)}
    return registry.get(name if name in known else name.replace("-", "_"))


def checked_options(backend: Backend, values: Mapping[str, Any] | None, flag: str = "--option") -> Any:
    """``values`` (plain, e.g. from the command line) as the backend's options instance,
    checked as export checks them; raises `BackendError` naming a bad one, whose hint
    says how to set it with ``flag`` (pytest's is ``--edgeport-option``)."""
    return validate_options(backend, options_from_dict(backend, dict(values or {}), flag), flag=flag)


def checked_backend(backend: Backend, options: Mapping[str, Any] | None, time_limit: float = CASE_TIME_LIMIT,
                    flag: str = "--option", timeout_flag: str = "--timeout") -> str:
    """``backend``'s version, once its options (plain values, `checked_options`) and its
    version (`checked_version`) are checked: a bad one raises `BackendError` before any
    case runs, not after every case. Both may run the plugin's code (a version property,
    a toolchain listing an option's choices), so they run within the time limit of a
    case: one that hangs raises too, naming the step and ``timeout_flag``."""

    def check() -> str:
        with step("its options check"):
            checked_options(backend, options, flag)
        with step("reading its version"):
            return checked_version(backend)

    checked = run_within(check, time_limit, backend, "the run's options and version check")
    if isinstance(checked, Hang):
        raise BackendError(checked.message(backend.name, time_limit, timeout_flag))
    return checked


def parse_option_items(backend: Backend, items: Iterable[str], flag: str = "--option") -> dict[str, str]:
    """``["fp16=true"]`` -> ``{"fp16": "true"}``: options as the command line gives them
    (the backend's options class types them), each written KEY=VALUE or, as export
    writes it, BACKEND.KEY=VALUE; ``flag`` is the one they came with, for the hint."""
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not (eq and key):
            raise InputError(f"bad backend option {item!r}",
                             hint=f"write {flag} KEY=VALUE or {flag} BACKEND.KEY=VALUE, e.g. fp16=true")
        options[key.removeprefix(f"{backend.name}.")] = value
    return options


def run_kit_case(backend: Backend, case: KitCase, options: Mapping[str, Any] | None = None,
                 without_torch: TorchFreeRuns | None = None, time_limit: float = CASE_TIME_LIMIT,
                 timeout_flag: str = "--timeout") -> Outcome:
    """Run one case on ``backend`` with ``options`` (plain values) and judge it; with
    ``without_torch`` (what `run_kit` and the pytest plugin give: one per run), a program
    of the backend's steps only is also run where torch cannot be imported, as on a device.

    A case not done within ``time_limit`` seconds fails, naming the step that hung and
    ``timeout_flag``, the flag that raises the limit (pytest's is ``--edgeport-timeout``);
    a backend left hung by an earlier case (`time_limit.py`) fails at once."""
    hung = left_behind(backend)
    if hung:
        return Outcome(case.name, _family(case), _dtype(case), Verdict.FAILED, 0.0, message=(
            f"not run: {backend.name}'s {hung} (Python cannot kill a thread); fix the hang, or raise the limit with "
            f"{timeout_flag} SECONDS if it is only slow"))
    done = run_within(lambda: _run_kit_case(backend, case, options, without_torch), time_limit, backend,
                      f"case {case.name}")
    if isinstance(done, Hang):
        return Outcome(case.name, _family(case), _dtype(case), Verdict.FAILED, 0.0,
                       message=done.message(backend.name, time_limit, timeout_flag))
    return done


def _run_kit_case(backend: Backend, case: KitCase, options: Mapping[str, Any] | None,
                  without_torch: TorchFreeRuns | None) -> Outcome:
    """`run_kit_case`'s work, without its time limit."""
    availability = _availability(backend)
    if not availability.can_compile:
        return Outcome(case.name, _family(case), _dtype(case), Verdict.NOT_RUN, 0.0,
                       message=f"not compiled: {backend.name} cannot compile here: {availability.why}")
    if isinstance(case, QuantizedCase):
        return _judge_quantized(backend, case, options, without_torch)
    checked = checked_options(backend, options)
    try:
        declared = checked_tolerance(backend, checked)
    except BackendError as exc:  # one case's failure, not the whole run's "internal error"
        return Outcome(case.name, "float", _dtype(case), Verdict.FAILED, 0.0, message=str(exc))
    tolerance = max(case.rtol, declared)
    result = run_case(backend, case, options, rtol=tolerance, without_torch=without_torch)
    return _judge(backend, result, Measure("float", _dtype(case), tolerance, "relative", result.max_error))


def _family(case: KitCase) -> str:
    return "quantized" if isinstance(case, QuantizedCase) else "float"


def _dtype(case: KitCase) -> str:
    """What a case computes in: a quantized case's scheme, a float case's input dtypes."""
    if isinstance(case, QuantizedCase):
        return case.scheme
    inputs = case.build()[1]
    return ",".join(dict.fromkeys(str(x.dtype).removeprefix("torch.") for x in inputs if isinstance(x, torch.Tensor)))


def run_kit(backend: Backend, options: Mapping[str, Any] | None = None, cases: Iterable[KitCase] | None = None,
            progress: Callable[[Outcome], None] | None = None, time_limit: float = CASE_TIME_LIMIT,
            timeout_flag: str = "--timeout") -> KitRun:
    """Run ``cases`` (default: every case, `kit_cases`) on ``backend``, with one process
    without torch for the whole run (`TorchFreeRuns`), each case within ``time_limit``
    seconds (`run_kit_case`); ``progress`` sees each outcome as it comes."""
    values = dict(options or {})
    time_limit = checked_time_limit(time_limit, timeout_flag)
    version = checked_backend(backend, values, time_limit, timeout_flag=timeout_flag)
    availability = _availability_within(backend, time_limit, timeout_flag)
    outcomes = []
    with TorchFreeRuns() as without_torch:
        for case in kit_cases() if cases is None else cases:
            outcomes.append(run_kit_case(backend, case, values, without_torch, time_limit, timeout_flag))
            if progress:
                progress(outcomes[-1])
    return KitRun(backend.name, version, values, availability, tuple(outcomes))


def _availability(backend: Backend) -> Availability:
    try:
        return backend.availability()
    except Exception as exc:  # reported as `edgeport backends` reports it, never raised
        return Availability(False, False, why=f"availability() raised {type(exc).__name__}: {exc}")


def _availability_within(backend: Backend, seconds: float, flag: str) -> Availability:
    """`_availability` within the time limit of a case: one that hangs is reported as
    this machine not being able to compile, saying so."""
    asked = run_within(lambda: _availability(backend), seconds, backend, "the run's availability() check")
    if isinstance(asked, Hang):
        return Availability(False, False, why=asked.message(backend.name, seconds, flag))
    return asked


def _judge_quantized(backend: Backend, case: QuantizedCase, options: Mapping[str, Any] | None,
                     without_torch: TorchFreeRuns | None) -> Outcome:
    if case.scheme not in backend.schemes:
        offered = ", ".join(sorted(backend.schemes)) or "none"
        return Outcome(case.name, "quantized", _dtype(case), Verdict.DECLINED, 0.0,
                       message=f"{backend.name} does not offer the {case.scheme} scheme (it offers: {offered})")
    result = run_quantized_case(backend, case, options, without_torch)
    if result.max_steps is not None:  # int8 whose outputs all leave through a known scale
        return _judge(backend, result, Measure("quantized", _dtype(case), case.steps, "steps", result.max_steps))
    return _judge(backend, result, Measure("quantized", _dtype(case), case.rtol, "relative", result.relative_error))


@dataclass(frozen=True)
class Measure:
    """What a run case is judged by: its family and dtype, its error and the tolerance,
    both in ``unit``."""

    family: str
    dtype: str
    tolerance: float
    unit: str
    error: float | None


def _judge(backend: Backend, result: CaseResult | QuantizedCaseResult, measure: Measure) -> Outcome:
    """The verdict of one run case (see the module docstring for the rules)."""
    error, tolerance, unit = measure.error, measure.tolerance, measure.unit
    program = result.program
    report = program.report() if program is not None else {"nodes": [], "partitions": []}
    taken = tuple(dict.fromkeys(n["op"] for n in report["nodes"] if n["backend"] != "portable"))
    fallbacks = [p["fallback"] for p in report["partitions"] if p.get("fallback")]

    def outcome(verdict: Verdict, message: str) -> Outcome:
        taken_none = verdict is Verdict.DECLINED or result.delegated == 0.0
        shown = None if taken_none else error  # all portable torch: no error of the backend's
        return Outcome(result.name, measure.family, measure.dtype, verdict, result.delegated, taken,
                       dict(result.reasons), shown, tolerance, unit, message)

    if program is None and result.error:  # no program and no error: the scheme declined, below
        return outcome(Verdict.FAILED, result.error)
    fault = report.get("faults", {}).get(backend.name)
    if fault:  # its nodes were declined for it, but a check that raises is a bug, not an answer
        return outcome(Verdict.FAILED, f"{fault} (support() and prepare() decline with Support.no, never raise)")
    if fallbacks:
        return outcome(Verdict.FAILED, f"a partition it accepted fell back to portable: {fallbacks[0]}")
    if result.delegated == 0.0:
        reasons = declined_text(result.reasons) or "it took no node"
        return outcome(Verdict.DECLINED, f"declined: {reasons}")
    if result.error:
        return outcome(Verdict.FAILED, result.error)
    if result.max_error is None:
        why = _availability(backend).why or "its availability() says it cannot run here"
        return outcome(Verdict.NOT_RUN, f"compiled; not run: {why}")
    if not result.passed:
        if error != float("inf"):
            return outcome(Verdict.FAILED, f"error {_fmt(error)} {unit} > tolerance {_fmt(tolerance)}")
        # no tolerance allows it: a float case says which output and how; a quantized one's error has no dtype
        return outcome(Verdict.FAILED, result.mismatch if isinstance(result, CaseResult) and result.mismatch
                       else "an output is NaN or infinite where the reference has a number")
    share = "all" if result.delegated == 1.0 else f"{result.delegated:.0%}"
    if isinstance(result, QuantizedCaseResult) and result.within_spread:
        return outcome(Verdict.PASSED, f"took {share} of its nodes; error {_fmt(error)} {unit}, within the rounding "
                                       "spread of its reference nudged by the backend's op_error (edgeport check's "
                                       "rule)")
    return outcome(Verdict.PASSED, f"took {share} of its nodes; error {_fmt(error)} <= {_fmt(tolerance)} {unit}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"
