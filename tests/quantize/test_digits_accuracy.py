"""Accuracy on real data: scikit-learn's bundled handwritten digits (tests/digits.py), a
small CNN trained in seconds on a fixed seeded split, exported int8 with calibration
from the training split. Its test accuracy must stay within 1.0 percentage point of
the float model's: on cpu, on mediatek (its labelled CPU reference), on qualcomm (int8
and a16w8, in QNN's HTP simulator), and in one mixed qualcomm,cpu program where each
side quantizes with its own scheme."""

from __future__ import annotations

import pytest
import torch

import edgeport
from digits import BATCH, accuracy, train
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.backends.qualcomm import QualcommBackend
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


def needs_qnn() -> QualcommBackend:
    pytest.importorskip("onnxruntime_qnn")
    pytest.importorskip("onnxscript")
    return QualcommBackend()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8", "a16w8"])
def test_qualcomm_keeps_float_accuracy_within_one_point(digits, scheme):
    program = edgeport.export(digits.model, (digits.test[:BATCH],), ["qualcomm"], quantize=scheme,
                              calibration=digits.calibration(), registry=registry_for(needs_qnn()))
    float_accuracy = accuracy(digits.model, digits.test, digits.labels)
    quantized_accuracy = accuracy(program, digits.test, digits.labels)
    print(f"\ndigits test accuracy: fp32 {float_accuracy:.1f}%, {scheme} on qualcomm (HTP simulator) "
          f"{quantized_accuracy:.1f}% ({len(digits.labels)} images)")
    assert float_accuracy > 90.0
    assert abs(float_accuracy - quantized_accuracy) <= 1.0
    assert {n["backend"] for n in program.report()["nodes"]} == {"qualcomm"}
    (artifact,) = program.manifest.artifacts.values()
    assert artifact.metadata["quantized"]["activations"] == {"int8": "uint8", "a16w8": "uint16"}[scheme]


class HeadlessQualcomm(QualcommBackend):
    """The real qualcomm backend, declining linears: edgeport's qualcomm takes every op
    of this model, and the mixed test needs the classifier head on the cpu."""

    def support(self, node, ctx):  # noqa: ANN001, ANN201
        if node.target == torch.ops.aten.linear.default:
            return edgeport.Support.no("left to the cpu by this test")
        return super().support(node, ctx)


@pytest.mark.slow
def test_mixed_qualcomm_cpu_quantizes_each_side_with_its_own_scheme(digits):
    """`auto`: a16w8 on the qualcomm convolutions, int8 on the cpu's linears, one export."""
    needs_qnn()
    program = edgeport.export(digits.model, (digits.test[:BATCH],), ["qualcomm", "cpu"], quantize="auto",
                              calibration=digits.calibration(),
                              registry=registry_for(HeadlessQualcomm(), CpuBackend()))
    quantization = program.manifest.report["forward"]["quantization"]["backends"]
    assert quantization["qualcomm"].endswith("with a16w8")
    # the first linear's output is read by a qualcomm relu, which quantizes it to uint16:
    # the cpu has no int8 output for it, so XNNPACK runs that linear in float
    assert quantization["cpu"] == ("quantizes 1 of its 2 op(s) with int8, but 1 stays float: linear (its compiled "
                                   "artifact computes it in float)")
    placed = {n["op"]: n["backend"] for n in program.report()["nodes"] if n["op"].startswith("aten.")}
    assert placed["aten.convolution.default"] == "qualcomm" and placed["aten.linear.default"] == "cpu"
    # the relu between the two linears is qualcomm's too: a partition of its own
    artifacts = list(program.manifest.artifacts.values())
    on_qnn = [a.metadata["quantized"] for a in artifacts if a.backend == "qualcomm"]
    assert {q["activations"] for q in on_qnn} == {"uint16"} and {"weights": "int8"}.items() <= on_qnn[0].items()
    assert sum(a.metadata["ops"].get("FULLY_CONNECTED", 0) for a in artifacts if a.backend == "cpu") == 2
    assert all(a.metadata["ops"]["QUANTIZE"] == 1 for a in artifacts if a.backend == "cpu")  # int8 inside
    float_accuracy = accuracy(digits.model, digits.test, digits.labels)
    mixed_accuracy = accuracy(program, digits.test, digits.labels)
    print(f"\ndigits test accuracy: fp32 {float_accuracy:.1f}%, a16w8 on qualcomm + int8 on cpu "
          f"{mixed_accuracy:.1f}% ({len(digits.labels)} images)")
    assert abs(float_accuracy - mixed_accuracy) <= 1.0
