"""Accuracy on real data: scikit-learn's bundled handwritten digits (1,797 real 8x8
images, no download), a small CNN trained in seconds on a fixed seeded split, exported
int8 with calibration from the training split. Its test accuracy must stay within 1.0
percentage point of the float model's: on cpu, on qualcomm (int8 and a16w8, in QNN's
HTP simulator), and in one mixed qualcomm,cpu program where each side quantizes with
its own scheme."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.qualcomm import QualcommBackend
from edgeport.testing import registry_for

sklearn_datasets = pytest.importorskip("sklearn.datasets")

BATCH = 100  # the exported programs take batches of this size
TEST = 500  # test images (5 batches); the other 1,297 train


class DigitsCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 16, 4, 4)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 32, 2, 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@pytest.fixture(scope="module")
def digits():
    """(trained model, train images, test images, test labels), from a seeded split."""
    data = sklearn_datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[TEST:], order[:TEST]
    torch.manual_seed(0)
    model = DigitsCnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for batch in train[torch.randperm(len(train))].split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval(), images[train], images[test], labels[test]


def accuracy(run, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = torch.cat([run(batch).argmax(-1) for batch in images.split(BATCH)])
    return 100.0 * float((predicted == labels).float().mean())


@pytest.mark.slow
def test_int8_on_cpu_keeps_float_accuracy_within_one_point(digits):
    model, train, test, labels = digits
    calibration = [(batch,) for batch in train[: 8 * BATCH].split(BATCH)]
    program = edgeport.export(model, (test[:BATCH],), ["cpu"], quantize="int8", calibration=calibration,
                              registry=registry_for(CpuBackend()))
    float_accuracy = accuracy(model, test, labels)
    int8_accuracy = accuracy(program, test, labels)
    print(f"\ndigits test accuracy: fp32 {float_accuracy:.1f}%, int8 on cpu {int8_accuracy:.1f}% "
          f"({len(labels)} images)")
    assert float_accuracy > 90.0  # the model learned the task: the comparison means something
    assert abs(float_accuracy - int8_accuracy) <= 1.0
    assert {n["backend"] for n in program.report()["nodes"]} == {"cpu"}
    ops = program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1


def calibration_of(train: torch.Tensor) -> list[tuple[torch.Tensor]]:
    return [(batch,) for batch in train[: 8 * BATCH].split(BATCH)]


def needs_qnn() -> QualcommBackend:
    pytest.importorskip("onnxruntime_qnn")
    pytest.importorskip("onnxscript")
    return QualcommBackend()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8", "a16w8"])
def test_qualcomm_keeps_float_accuracy_within_one_point(digits, scheme):
    model, train, test, labels = digits
    program = edgeport.export(model, (test[:BATCH],), ["qualcomm"], quantize=scheme,
                              calibration=calibration_of(train), registry=registry_for(needs_qnn()))
    float_accuracy = accuracy(model, test, labels)
    quantized_accuracy = accuracy(program, test, labels)
    print(f"\ndigits test accuracy: fp32 {float_accuracy:.1f}%, {scheme} on qualcomm (HTP simulator) "
          f"{quantized_accuracy:.1f}% ({len(labels)} images)")
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
    model, train, test, labels = digits
    program = edgeport.export(model, (test[:BATCH],), ["qualcomm", "cpu"], quantize="auto",
                              calibration=calibration_of(train),
                              registry=registry_for(HeadlessQualcomm(), CpuBackend()))
    quantization = program.manifest.report["forward"]["quantization"]["backends"]
    assert quantization["qualcomm"].endswith("with a16w8") and quantization["cpu"].endswith("with int8")
    placed = {n["op"]: n["backend"] for n in program.report()["nodes"] if n["op"].startswith("aten.")}
    assert placed["aten.convolution.default"] == "qualcomm" and placed["aten.linear.default"] == "cpu"
    # the relu between the two linears is qualcomm's too: a partition of its own
    artifacts = list(program.manifest.artifacts.values())
    on_qnn = [a.metadata["quantized"] for a in artifacts if a.backend == "qualcomm"]
    assert {q["activations"] for q in on_qnn} == {"uint16"} and {"weights": "int8"}.items() <= on_qnn[0].items()
    assert sum(a.metadata["ops"].get("FULLY_CONNECTED", 0) for a in artifacts if a.backend == "cpu") == 2
    assert all(a.metadata["ops"]["QUANTIZE"] == 1 for a in artifacts if a.backend == "cpu")  # int8 inside
    float_accuracy = accuracy(model, test, labels)
    mixed_accuracy = accuracy(program, test, labels)
    print(f"\ndigits test accuracy: fp32 {float_accuracy:.1f}%, a16w8 on qualcomm + int8 on cpu "
          f"{mixed_accuracy:.1f}% ({len(labels)} images)")
    assert abs(float_accuracy - mixed_accuracy) <= 1.0
