"""The direct call of a one-step method (`Runtime.call`, `Program.__call__`): it runs
the step without the plan walk when the inputs fit exactly, and leaves everything else
(conversions, the input errors) to the walk, so both give the same results and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeport
from edgeport.arrays import as_numpy
from edgeport.backends.tflite.runner import TfliteExecutable
from edgeport.runtime import Runtime

from torch_backend import TorchOpsBackend, registry_with


class ReluAdd(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + 1.0


class HalfDelegated(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.relu(x))  # tanh: torchops has no kernel, a portable step


X = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def one_step() -> edgeport.Program:
    registry = registry_with(TorchOpsBackend())
    return edgeport.export(ReluAdd(), (X,), ["torchops"], registry=registry)


@pytest.fixture(scope="module")
def cpu_linear() -> tuple[torch.nn.Module, edgeport.Program]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3).eval()
    return linear, edgeport.export(linear, (X,), ["cpu"])


def _no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    def walk(*args, **kwargs):
        raise AssertionError("the plan walk ran")

    monkeypatch.setattr(Runtime, "run", walk)


def test_a_one_step_method_runs_without_the_plan_walk(one_step, monkeypatch):
    expected = one_step.run(X).outputs
    _no_walk(monkeypatch)
    assert torch.equal(one_step(X), expected)


@pytest.mark.parametrize("value", [X.numpy(), X.t().contiguous().t(), X.clone().requires_grad_()],
                         ids=["numpy array", "non-contiguous", "needs grad"])
def test_inputs_that_do_not_fit_exactly_take_the_walk_and_give_the_same_result(one_step, value):
    assert torch.equal(one_step(value).detach(), torch.relu(X) + 1.0)


@pytest.mark.parametrize("value, message", [
    (X.double(), r"input 0 \('x'\) must be float32, got float64"),
    (X[:1], r"input 0 \('x'\) must have shape \[2, 5\], got \[1, 5\]"),
    ("text", r"input 0 \('x'\) must be a tensor, got str"),
])
def test_inputs_the_method_cannot_take_get_the_walks_errors(one_step, value, message):
    with pytest.raises(edgeport.InputError, match=message):
        one_step(value)


def test_a_wrong_number_of_inputs_gets_the_walks_error(one_step):
    with pytest.raises(edgeport.InputError, match=r"takes 1 input\(s\)"):
        one_step(X, X)


def test_a_method_with_portable_steps_takes_the_walk(monkeypatch):
    registry = registry_with(TorchOpsBackend())
    program = edgeport.export(HalfDelegated(), (X,), ["torchops"], registry=registry)
    expected = program(X)
    _no_walk(monkeypatch)
    with pytest.raises(AssertionError, match="the plan walk ran"):
        program(X)
    assert torch.allclose(expected, torch.tanh(torch.relu(X)))


def test_a_step_that_takes_numpy_gets_numpy_arrays_and_the_caller_tensors(cpu_linear, monkeypatch):
    linear, program = cpu_linear
    seen: list[type] = []
    run = TfliteExecutable.run

    def spy(self, inputs):
        seen.extend(type(x) for x in inputs)
        return run(self, inputs)

    monkeypatch.setattr(TfliteExecutable, "run", spy)
    fresh = edgeport.Program(program.manifest, program.files)  # loads with the spy in place
    out = fresh(X)
    assert seen == [np.ndarray]
    assert isinstance(out, torch.Tensor) and torch.allclose(out, linear(X), atol=1e-5)


def test_as_numpy_shares_a_plain_tensor_and_copies_what_it_must():
    x = torch.arange(6.0).reshape(2, 3)
    assert np.shares_memory(as_numpy(x), x.numpy())
    assert as_numpy(x.t()).flags.c_contiguous and np.array_equal(as_numpy(x.t()), x.t().numpy())
    assert np.array_equal(as_numpy(x.clone().requires_grad_()), x.numpy())


def test_input_buffers_are_the_delegates_own_storage_and_a_call_on_them_copies_nothing(cpu_linear, monkeypatch):
    linear, program = cpu_linear
    fresh = edgeport.Program(program.manifest, program.files)
    (buffer,) = fresh.input_buffers()
    assert isinstance(buffer, torch.Tensor) and buffer.shape == X.shape and buffer.dtype == X.dtype
    copies: list[int] = []
    executable = next(iter(fresh.runtime()._loaded.values()))[0]
    set_tensor = executable._set
    monkeypatch.setattr(executable, "_set", lambda index, value: (copies.append(index), set_tensor(index, value)))
    for seed in (1, 2):  # the call reads what is in the buffer now
        x = torch.randn(X.shape, generator=torch.Generator().manual_seed(seed))
        buffer.copy_(x)
        assert torch.allclose(fresh(buffer), linear(x), atol=1e-5)
    assert copies == []
    other = torch.randn(X.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(fresh(other), linear(other), atol=1e-5)
    assert copies == [0] and torch.equal(buffer, other)  # another input is copied into the buffer


def test_input_buffers_as_numpy_arrays_on_the_torch_free_run_side(cpu_linear):
    linear, program = cpu_linear
    fresh = edgeport.Program(program.manifest, program.files)
    fresh.runtime(arrays="numpy")
    (buffer,) = fresh.input_buffers()
    assert isinstance(buffer, np.ndarray)
    buffer[...] = X.numpy()
    assert np.allclose(fresh(buffer), linear(X).detach().numpy(), atol=1e-5)


def test_a_method_without_a_direct_call_has_no_input_buffers():
    registry = registry_with(TorchOpsBackend())
    program = edgeport.export(HalfDelegated(), (X,), ["torchops"], registry=registry)
    assert program.input_buffers() == [None]
    with pytest.raises(edgeport.InputError, match="no method 'nosuch'"):
        program.input_buffers("nosuch")
