"""Conformance: run any backend against the shared case library with one call.

    from edgeport.testing import run_conformance
    for result in run_conformance(MyBackend()):
        print(result.name, result.delegated, result.max_error, result.reasons)

These are the raw results. The conformance kit (`edgeport.testing.kit`) judges them,
one verdict per case at the backend's declared tolerance: it is what
``pytest --edgeport-backend NAME``, ``edgeport conformance NAME`` and the built-in
backends' tests run (docs/conformance.md).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.utils._pytree as pytree

from ..api import export
from ..backend import Backend
from ..native_output import loggers_at
from ..plugins import Registry, registry_for
from ..program import Program
from .cases import CASES, Case
from .roundtrip import RoundTripFailed, loaded_runtime, numpy_outputs, saved_and_loaded
from .time_limit import step
from .without_torch import TorchFreeRuns
from .quantized_cases import (
    QUANTIZED_CASES,
    QuantizedCase,
    QuantizedCaseResult,
    reference_program,
    run_quantized_case,
    run_quantized_conformance,
)

__all__ = [
    "CASES",
    "Case",
    "CaseResult",
    "QUANTIZED_CASES",
    "QuantizedCase",
    "QuantizedCaseResult",
    "compare",
    "installed_backends",
    "registered_by",
    "reference_program",
    "registry_for",
    "run_case",
    "run_conformance",
    "run_quantized_case",
    "run_quantized_conformance",
]


@dataclass
class CaseResult:
    """How one case went on one backend.

    ``delegated`` is the share of compute nodes the backend took (0.0 to 1.0);
    ``reasons`` maps each op the backend did not take to its reason. ``max_error`` is
    None when the backend cannot run here (only compilation was checked).
    """

    name: str
    delegated: float
    reasons: dict[str, str] = field(default_factory=dict)
    max_error: float | None = None  # max |actual - expected| / max(|expected|, 1e-6)
    passed: bool = True
    error: str = ""  # set if export or running failed outright
    mismatch: str = ""  # when max_error is infinite: which output, and how it differs from eager's
    program: Program | None = field(default=None, repr=False)  # the exported program, to inspect further


def registered_by(plugin: object) -> dict[str, Backend]:
    """The backends ``plugin`` (a module or object with hookimpls) registers, by name,
    in a registry of its own: a plugin's first smoke test."""
    registry = Registry(entry_points=False)
    registry.add_plugin(plugin, name="plugin-under-test")
    broken = registry.broken()
    if broken:
        raise AssertionError(f"the plugin failed to register: {broken[0].error}")
    return {name: entry.backend for name, entry in registry.entries().items()}


def installed_backends() -> dict[str, dict]:
    """What ``edgeport backends --json`` lists, by name: proves a plugin is found through
    its installed entry point (its second smoke test)."""
    import json

    from click.testing import CliRunner

    from ..cli import cli

    result = CliRunner().invoke(cli, ["backends", "--json"])
    if result.exit_code != 0:
        raise AssertionError(f"edgeport backends failed: {result.output}")
    return {row["name"]: row for row in json.loads(result.output)["backends"]}


def compare(actual: object, expected: object) -> float:
    """Relative max error between two output structures; infinite when a leaf's dtype or
    shape differs (an int64 "mean" of a float mean is wrong whatever its values), or
    when NaNs sit elsewhere than eager's (Python's max would drop a NaN difference as if
    it were no error). Equal values, infinities and NaNs included, differ by 0."""
    return compared(actual, expected)[0]


def compared(actual: object, expected: object) -> tuple[float, str]:
    """`compare`'s error, and when it is infinite, why: which output, and its dtype,
    shape or value against eager's ("" when the error is finite)."""
    worst = 0.0
    for index, (a, e) in enumerate(zip(pytree.tree_leaves(actual), pytree.tree_leaves(expected), strict=True)):
        if a.dtype != e.dtype:
            return float("inf"), f"output {index} is {_name(a.dtype)}, eager's {_name(e.dtype)}"
        if a.shape != e.shape:
            return float("inf"), f"output {index} has shape {list(a.shape)}, eager's {list(e.shape)}"
        if not e.numel():
            continue
        a, e = a.detach().double(), e.detach().double()
        difference = torch.where((a == e) | (a.isnan() & e.isnan()), 0.0, (a - e).abs())  # NaN: a NaN is misplaced
        if not bool(difference.isfinite().all()):
            at = tuple(int(i) for i in (~difference.isfinite()).nonzero()[0])
            return float("inf"), f"output {index} is {float(a[at])} at {list(at)}, eager's {float(e[at])}"
        finite = e[e.isfinite()]
        scale = max(float(finite.abs().max()) if finite.numel() else 0.0, 1e-6)
        worst = max(worst, float(difference.max()) / scale)
    return worst, ""


def _compared_flat(actual: list[torch.Tensor], expected: object) -> tuple[float, str]:
    """`compared` for outputs as a flat list (as `TorchFreeRuns` returns them)."""
    leaves = pytree.tree_leaves(expected)
    if len(actual) != len(leaves):
        return float("inf"), f"{len(actual)} outputs, eager's {len(leaves)}"
    return compared(actual, leaves)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def declines_unsaid() -> contextlib.AbstractContextManager[None]:
    """Export's warnings about declined nodes (a backend that took none, nodes with
    dynamic dims) off while a case exports: the case's verdict names each decline, and a
    young backend declines every node of most cases (88 warning lines for the template's)."""
    return loggers_at(logging.ERROR, [logging.getLogger("edgeport.export")])


def taken_and_declined(program: Program, backend: Backend) -> tuple[float, dict[str, str]]:
    """The share of ``program``'s nodes that ``backend`` took, and its reason for each op
    it declined."""
    nodes = program.report()["nodes"]
    taken = sum(n["backend"] == backend.name for n in nodes)
    reasons = {n["op"]: n["reasons"][backend.name] for n in nodes
               if n["backend"] != backend.name and backend.name in n["reasons"]}
    return taken / max(len(nodes), 1), reasons


def run_case(backend: Backend, case: Case, options: Mapping[str, object] | None = None,
             rtol: float | None = None, without_torch: TorchFreeRuns | None = None) -> CaseResult:
    """Export ``case`` for ``backend`` alone, save and load it as users do, and (where
    the backend runs) compare its answers, on tensors and on numpy arrays, with eager;
    with ``without_torch``, also its answer where torch cannot be imported (for a
    program of the backend's steps only, as on numpy arrays)."""
    module, inputs = case.build()
    registry = registry_for(backend)
    weights = {name: value.clone() for name, value in module.state_dict().items()}
    try:
        with declines_unsaid(), step("export"):  # its support(), prepare() and compile() are named where they hang
            program = export(module, inputs, [backend.name], dynamic_shapes=case.dynamic_shapes,
                             options={backend.name: dict(options or {})}, registry=registry)
    except Exception as exc:
        return CaseResult(case.name, 0.0, passed=False, error=f"export failed: {type(exc).__name__}: {exc}")
    changed = [name for name, value in module.state_dict().items() if not _same(weights[name], value)]
    if changed:  # eager would then be the wrong one: its error blamed a right answer of the backend's
        return CaseResult(case.name, 0.0, passed=False, error=(
            f"export changed the model's weights ({', '.join(changed)}): the program a backend is given shares "
            "them, so support(), prepare() and compile() must not write into its tensors (copy one to change it)"))
    result = CaseResult(case.name, *taken_and_declined(program, backend), program=program)
    try:
        saved, on_arrays = saved_and_loaded(program, registry)
    except RoundTripFailed as exc:
        result.passed, result.error = False, str(exc)
        return result
    if not backend.availability().can_run:
        return result
    try:
        loaded_runtime(saved)
        with torch.no_grad():  # the example inputs, then a dynamic case's other sizes
            unrun = copy.deepcopy(module) if on_arrays is not None else None  # state as the numpy program's
            runs = (inputs, *(case.resized() if case.resized else ()))
            errors = [_checked_run(saved, module, args) for args in runs]
            if on_arrays is not None:
                expected = unrun(*inputs)
                error, why = compared(numpy_outputs(on_arrays, inputs), expected)
                errors.append((error, f"on numpy inputs, {why}" if why else ""))
                if without_torch is not None:
                    error, why = _compared_flat(without_torch.outputs(backend, program, inputs), expected)
                    errors.append((error, f"without torch, {why}" if why else ""))
            result.max_error, result.mismatch = max(errors, key=lambda e: e[0])
    except (_Misbehaves, RoundTripFailed) as exc:
        result.passed, result.error = False, str(exc)
        return result
    except Exception as exc:
        result.passed, result.error = False, f"run failed: {type(exc).__name__}: {exc}"
        return result
    result.passed = result.max_error <= (rtol if rtol is not None else case.rtol)
    return result


class _Misbehaves(Exception):
    """A backend's run broke the executable contract (docs/writing-a-backend.md)."""


def _checked_run(program: Program, module: torch.nn.Module, args: tuple) -> tuple[float, str]:
    """The program's error against eager on ``args`` (`compared`), after checking what a comparison
    alone cannot see: the run left its inputs as they were (a backend writing its
    result into an input passed every idempotent case, and changed the caller's
    tensor), and its outputs are its own (ones the next call overwrites passed too)."""
    expected = module(*args)  # first, on the inputs as the caller gave them
    before = [x.clone() for x in pytree.tree_leaves(args) if isinstance(x, torch.Tensor)]
    with step("run()"):
        got = program(*args)
    after = [x for x in pytree.tree_leaves(args) if isinstance(x, torch.Tensor)]
    if not all(_same(a, b) for a, b in zip(before, after)):
        raise _Misbehaves("the run changed its inputs: an executable must not write into the tensors it is given")
    outputs = [x for x in pytree.tree_leaves(got) if isinstance(x, torch.Tensor)]
    kept = [x.clone() for x in outputs]
    try:  # other values, so a buffer the next call writes would hold other numbers
        with step("run()"):
            program(*pytree.tree_map(lambda x: x * 2 + 1 if isinstance(x, torch.Tensor) and x.is_floating_point()
                                     else x, args))
    except Exception:  # noqa: BLE001 - those values may be outside what the case takes: no verdict then
        return compared(got, expected)
    if not all(_same(a, b) for a, b in zip(kept, outputs)):
        raise _Misbehaves("the next call changed this call's outputs: an executable must return arrays of its own "
                          "(copies), not its buffers")
    return compared(got, expected)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaNs where NaNs were."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def run_conformance(backend: Backend, cases: Iterable[Case] | None = None,
                    options: Mapping[str, object] | None = None, rtol: float | None = None) -> list[CaseResult]:
    """Run ``cases`` (default: all) on ``backend``; ``rtol`` overrides each case's
    tolerance (e.g. looser for an fp16 backend)."""
    return [run_case(backend, case, options, rtol) for case in (CASES if cases is None else cases)]
