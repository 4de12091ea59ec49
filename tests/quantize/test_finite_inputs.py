"""A quantized program refuses NaN and infinity in the inputs it quantizes at entry
(core/finite_inputs.py): integers have neither, and the program answered with ordinary
numbers where the float model gives NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.finite_inputs import quantized_positions
from edgeport.manifest import MethodPlan, TensorSpec
from edgeport.testing import registry_for
from edgeport.testing.quantized_cases import calibration_for


class TwoInputs(nn.Module):
    """`x` goes straight into a quantized linear; `y` is cleaned by the model first."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0))


def export(model: nn.Module, inputs: tuple[torch.Tensor, ...], scheme: str) -> edgeport.Program:
    calibration = calibration_for(inputs) if scheme == "int8" else None
    return edgeport.export(model.eval(), inputs, ["cpu"], quantize=scheme, calibration=calibration,
                           registry=registry_for(CpuBackend()))


@pytest.fixture(scope="module")
def two_inputs() -> edgeport.Program:
    torch.manual_seed(0)
    return export(TwoInputs(), (torch.randn(2, 8), torch.randn(2, 8)), "int8")


@pytest.fixture(scope="module")
def one_step() -> edgeport.Program:
    """A whole model in one cpu step, which calls take directly (runtime.py's direct call)."""
    torch.manual_seed(0)
    return export(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), (torch.randn(2, 8),), "int8-dynamic")


def with_value(value: float, at: tuple[int, int] = (1, 3)) -> torch.Tensor:
    x = torch.randn(2, 8)
    x[at] = value
    return x


def test_the_export_records_the_inputs_a_quantize_node_reads(two_inputs, one_step):
    assert two_inputs.manifest.report["forward"]["quantization"]["quantized_inputs"] == [0]
    assert one_step.manifest.report["forward"]["quantization"]["quantized_inputs"] == [0]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_value_in_a_quantized_input_is_refused_naming_it(two_inputs, value):
    with pytest.raises(edgeport.InputError, match=rf"^input 0 \('x'\) holds {value} at \[1, 3\] \(1 non-finite"):
        two_inputs(with_value(value), torch.randn(2, 8))
    with pytest.raises(edgeport.InputError, match=rf"^input 0 \('x'\) holds {value}"):  # by name: the plan's walk
        two_inputs(x=with_value(value), y=torch.randn(2, 8))


def test_an_input_the_model_cleans_first_may_hold_them(two_inputs):
    x = torch.randn(2, 8)
    clean = two_inputs(x, torch.zeros(2, 8))
    torch.testing.assert_close(two_inputs(x, with_value(float("nan"), at=(0, 0)) * 0), clean)


@pytest.mark.parametrize("arrays", ["auto", "numpy"])
def test_the_direct_call_checks_too(one_step, arrays):
    runtime = one_step.runtime(arrays)
    x = with_value(float("nan"))
    with pytest.raises(edgeport.InputError, match=r"holds nan at \[1, 3\]") as info:
        runtime.call("forward", [x.numpy() if arrays == "numpy" else x], {})
    assert "numpy.nan_to_num" in info.value.hint
    assert np.isfinite(edgeport.as_numpy(runtime.call("forward", [torch.nan_to_num(x).numpy()
                                                                   if arrays == "numpy" else torch.nan_to_num(x)],
                                                      {}))).all()


def test_finite_values_whose_sum_overflows_pass(one_step):
    x = torch.full((2, 8), 3e38)  # its sum, and the sum of its squares, overflow
    assert one_step(x).shape == (2, 4)


def test_a_damaged_record_is_a_program_error():
    plan = MethodPlan(name="forward", inputs=(TensorSpec("x", "float32", (2, 8)),), outputs=(), steps=(),
                      input_values=("x",), output_values=())
    assert quantized_positions({}, plan) == ()
    assert quantized_positions({"quantization": {"quantized_inputs": [0, 0]}}, plan) == (0,)
    for damaged in ("0", [1], [-1], [True], None):
        with pytest.raises(edgeport.ProgramError, match="quantization.quantized_inputs is damaged"):
            quantized_positions({"quantization": {"quantized_inputs": damaged}}, plan)
