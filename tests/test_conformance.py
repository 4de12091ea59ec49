"""The conformance library itself, run on the test backend and on portable torch."""

import math

import pytest
import torch

from edgeport.testing import CASES, compare, run_case, run_conformance
from torch_backend import TorchOpsBackend


def test_case_names_are_unique_and_cases_are_deterministic():
    assert len({c.name for c in CASES}) == len(CASES)
    (m1, x1), (m2, x2) = CASES[0].build(), CASES[0].build()
    assert compare(m1(*x1), m2(*x2)) == 0.0


def test_compare_counts_a_nan_eager_has_not_as_an_infinite_error():
    """A NaN difference once compared as no error (Python's max drops it): a NaN output
    passed every tolerance."""
    nan, inf = math.nan, math.inf
    assert compare(torch.tensor([1.0, nan]), torch.tensor([1.0, 2.0])) == inf
    assert compare(torch.tensor([1.0, 2.0]), torch.tensor([1.0, nan])) == inf
    assert compare(torch.tensor([nan, inf, 2.0]), torch.tensor([nan, inf, 2.0])) == 0.0
    assert compare(torch.tensor([inf, 2.0]), torch.tensor([3.0, 2.0])) == inf
    assert compare(torch.tensor([1.0, 2.2]), torch.tensor([1.0, 2.0])) == pytest.approx(0.1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_case_runs_exactly_on_a_backend_that_takes_elementwise_ops(case):
    result = run_case(TorchOpsBackend(ops=("relu", "add", "mul", "sub")), case)
    assert result.passed, result.error
    assert result.max_error is not None and result.max_error < 1e-5
    assert 0.0 <= result.delegated <= 1.0
    for op, reason in result.reasons.items():  # a dynamic case's sizes are core's to compute
        assert reason == f"torchops has no kernel for {op}" or op == "aten.sym_size.int", (op, reason)


def test_a_wrong_kernel_fails_its_cases():
    cases = [c for c in CASES if c.name in ("relu", "add_broadcast")]
    results = run_conformance(TorchOpsBackend(), cases, options={"scale": 1.01})
    assert [r.passed for r in results] == [False, False]
    assert all(r.max_error > 1e-3 for r in results)


class _InPlace(TorchOpsBackend):
    """Writes its result into its input: relu of relu is relu, so comparing alone passed."""

    def load(self, artifact):
        inner = super().load(artifact)

        class Run:
            def run(self, inputs):
                out = inner.run(inputs)[0]
                inputs[0].copy_(out)
                return [inputs[0]]

        return Run()


class _SharedBuffer(TorchOpsBackend):
    """Returns one buffer of its own, right each call: the next call overwrites the last result."""

    def load(self, artifact):
        inner = super().load(artifact)
        buffer = {}

        class Run:
            def run(self, inputs):
                out = inner.run(inputs)[0]
                return [buffer.setdefault("out", torch.empty_like(out)).copy_(out)]

        return Run()


@pytest.mark.parametrize(("backend", "message"), [
    (_InPlace(ops=("relu",)), "the run changed its inputs"),
    (_SharedBuffer(ops=("relu",)), "the next call changed this call's outputs"),
])
def test_a_run_that_breaks_the_executable_contract_fails_even_where_values_match(backend, message):
    relu = next(c for c in CASES if c.name == "relu")
    result = run_case(backend, relu)
    assert not result.passed and message in result.error
