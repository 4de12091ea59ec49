"""Helpers for the TFLite writer tests.

`capture` decomposes a module the way edgeport's capture does for the cpu backend
(core ATen minus the writer's KEEP_OPS, or everything with keep=()). `lower_cases`
lowers many cases as ONE model: torch's run_decompositions costs about half a second
per call whatever the graph size, so one export per suite keeps the tests fast while
each case is still checked on its own outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.utils._pytree as pytree

from edgeport.backends.tflite import KEEP_OPS, TfliteExecutable, TfliteModel, write_tflite
from edgeport.testing import Case, compare


class Lambda(torch.nn.Module):
    """A function as a module, so a case reads as one line."""

    def __init__(self, fn, **params: torch.Tensor):
        super().__init__()
        self.fn = fn
        for name, value in params.items():
            self.register_buffer(name, value)

    def forward(self, *args):
        return self.fn(self, *args)


def capture(module: torch.nn.Module, inputs: tuple, keep: Iterable[Any] = KEEP_OPS) -> torch.export.ExportedProgram:
    table = torch.export.default_decompositions()
    for op in keep:
        table.pop(op, None)
    return torch.export.export(module.eval(), inputs).run_decompositions(table)


def run(model: TfliteModel, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.from_numpy(o) for o in TfliteExecutable(model.data, threads=1).run(list(inputs))]


def lower(module: torch.nn.Module, *inputs: torch.Tensor, **kwargs: Any) -> tuple[TfliteModel, float]:
    """Write `module` as a TFLite model; the model and its relative error against eager."""
    model = write_tflite(capture(module, inputs), **kwargs)
    with torch.no_grad():
        expected = module(*inputs)
    return model, compare(run(model, inputs), expected if isinstance(expected, tuple) else [expected])


class _Suite(torch.nn.Module):
    """Several case modules side by side: forward(*all inputs) -> every case's outputs."""

    def __init__(self, modules: Sequence[torch.nn.Module], arity: Sequence[int]):
        super().__init__()
        self.cases = torch.nn.ModuleList(modules)
        self.arity = list(arity)

    def forward(self, *inputs):
        outputs, start = [], 0
        for module, n in zip(self.cases, self.arity):
            outputs.append(module(*inputs[start : start + n]))
            start += n
        return tuple(outputs)


@dataclass
class SuiteResult:
    model: TfliteModel
    program: torch.export.ExportedProgram
    errors: dict[str, float]  # case name -> relative max error against eager


def lower_cases(cases: Sequence[Case], keep: Iterable[Any] = KEEP_OPS) -> SuiteResult:
    """Export, write and run `cases` as one model; compare each case's outputs with eager."""
    built = [case.build() for case in cases]
    suite = _Suite([m for m, _ in built], [len(x) for _, x in built])
    inputs = tuple(t for _, x in built for t in x)
    with torch.no_grad():
        expected = suite(*inputs)
    program = capture(suite, inputs, keep)
    model = write_tflite(program)
    actual = iter(run(model, inputs))
    errors = {}
    for case, want in zip(cases, expected):
        leaves, spec = pytree.tree_flatten(want)
        got = pytree.tree_unflatten([next(actual) for _ in leaves], spec)
        errors[case.name] = compare(got, want)
    return SuiteResult(model, program, errors)


def case(name: str, fn, *inputs: Any, rtol: float = 1e-4, **params: Any) -> Case:
    """A one-function case; tensor shapes (tuples) become seeded randn tensors."""

    def build():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            made = [_make(x) for x in inputs]
            weights = {k: _make(v) for k, v in params.items()}
        return Lambda(fn, **weights).eval(), tuple(made)

    return Case(name, build, rtol, frozenset({"op"}))


def _make(x: Any) -> Any:
    return torch.randn(*x) if isinstance(x, tuple) else x
