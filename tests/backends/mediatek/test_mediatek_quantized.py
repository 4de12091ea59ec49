"""The mediatek backend in a quantized export: it offers no scheme yet, so its nodes stay
float, and it declines the quantize/dequantize nodes of the cpu's int8 partitions."""

from __future__ import annotations

import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.backends.mediatek.support import QUANTIZED
from edgeport.testing import reference_program, registry_for
from edgeport.testing.quantized_cases import calibration_for


class RankFiveMiddle(nn.Module):
    """Convs NeuroPilot takes, around a rank-5 relu it cannot (NNAPI ranks stop at 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = torch.relu(y.view(1, 2, 4, 6, 6)).view(1, 8, 6, 6)
        return self.b(y)


def test_mediatek_keeps_float_and_declines_the_cpus_quantize_nodes():
    torch.manual_seed(0)
    model, x = RankFiveMiddle().eval(), torch.randn(1, 3, 6, 6)
    program = edgeport.export(model, (x,), ["mediatek", "cpu"], quantize="int8", calibration=calibration_for((x,)),
                              keep_reference=True, registry=registry_for(MediatekBackend(), CpuBackend()))
    report = program.manifest.report["forward"]["quantization"]["backends"]
    assert report["mediatek"].startswith("keeps its") and "offers no quantization schemes" in report["mediatek"]
    assert report["cpu"].startswith("quantizes its")
    nodes = program.report()["nodes"]
    assert {n["backend"] for n in nodes if n["op"] == "aten.convolution.default"} == {"mediatek"}
    quant = [n for n in nodes if "quantize_per_tensor" in n["op"]]
    assert quant and {n["backend"] for n in quant} == {"cpu"}
    assert {n["reasons"]["mediatek"] for n in quant} == {QUANTIZED.reason}
    cpu = [info.metadata["ops"] for info in program.manifest.artifacts.values() if info.backend == "cpu"]
    assert cpu == [{"QUANTIZE": 1, "RESHAPE": 2, "RELU": 1, "DEQUANTIZE": 1}]
    torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=1e-3)
