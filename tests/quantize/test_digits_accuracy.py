"""Accuracy on real data: scikit-learn's bundled handwritten digits (tests/digits.py), a
small CNN trained in seconds on a fixed seeded split, exported int8 with calibration
from the training split. Its test accuracy must stay within 1.0 percentage point of
the float model's."""

from __future__ import annotations

import pytest

import edgeport
from digits import BATCH, accuracy, train
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.testing import registry_for


@pytest.fixture(scope="module")
def digits():
    return train()


@pytest.mark.slow
def test_int8_on_cpu_keeps_float_accuracy_within_one_point(digits):
    program = edgeport.export(digits.model, (digits.test[:BATCH],), ["cpu"], quantize="int8",
                              calibration=digits.calibration(), registry=registry_for(CpuBackend()))
    float_accuracy = accuracy(digits.model, digits.test, digits.labels)
    int8_accuracy = accuracy(program, digits.test, digits.labels)
    print(f"\ndigits test accuracy: fp32 {float_accuracy:.1f}%, int8 on cpu {int8_accuracy:.1f}% "
          f"({len(digits.labels)} images)")
    assert float_accuracy > 90.0  # the model learned the task: the comparison means something
    assert abs(float_accuracy - int8_accuracy) <= 1.0
    assert {n["backend"] for n in program.report()["nodes"]} == {"cpu"}
    ops = program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1


@pytest.mark.slow
def test_int8_on_mediatek_keeps_float_accuracy_within_one_point(digits):
    """A8W8 under NeuroPilot's rules, run here on the labelled LiteRT CPU reference."""
    program = edgeport.export(digits.model, (digits.test[:BATCH],), ["mediatek"], quantize="int8",
                              calibration=digits.calibration(), registry=registry_for(MediatekBackend()))
    float_accuracy = accuracy(digits.model, digits.test, digits.labels)
    int8_accuracy = accuracy(program, digits.test, digits.labels)
    where = program.runtime().step_labels("forward")
    print(f"\ndigits test accuracy: fp32 {float_accuracy:.1f}%, int8 on mediatek {int8_accuracy:.1f}% "
          f"({len(digits.labels)} images; ran as {', '.join(where)})")
    assert float_accuracy > 90.0
    assert abs(float_accuracy - int8_accuracy) <= 1.0
    assert {n["backend"] for n in program.report()["nodes"]} == {"mediatek"}
    (info,) = program.manifest.artifacts.values()
    assert info.metadata["apu_precision"].startswith("INT8 as written")
