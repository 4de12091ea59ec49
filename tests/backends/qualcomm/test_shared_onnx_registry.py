"""The test session's shared torch.onnx registry (tests/onnx_registry.py) writes the same
ONNX as torch's own registry built afresh, and no export's additions reach another's."""

from __future__ import annotations

import pytest
import torch

from edgeport.testing import CASES
from onnx_registry import SharedRegistries

pytest.importorskip("onnxscript")

from torch.onnx._internal.exporter._registration import ONNXRegistry  # noqa: E402

from edgeport.backends.qualcomm.onnx_export import export_onnx  # noqa: E402


def shared() -> SharedRegistries:
    stand_in = ONNXRegistry.from_torchlib.__func__
    assert isinstance(stand_in, SharedRegistries), "tests/conftest.py shares the registry for the session"
    return stand_in


def test_each_call_gets_its_own_copy_of_one_build():
    first, second = ONNXRegistry.from_torchlib(), ONNXRegistry.from_torchlib()
    assert first is not second and first.functions is not second.functions
    assert first.functions.keys() == second.functions.keys() and first.opset_version == second.opset_version
    assert len([key for key in shared().built if key[1:] == ((), ())]) == 1
    first.register_op(torch.ops.aten.relu.default, lambda x: x)  # what a custom_translation_table does
    assert len(first.get_decomps(torch.ops.aten.relu.default)) == len(second.get_decomps(torch.ops.aten.relu.default)) + 1
    assert len(ONNXRegistry.from_torchlib().get_decomps(torch.ops.aten.relu.default)) == len(
        second.get_decomps(torch.ops.aten.relu.default))


@pytest.mark.parametrize("name", ["conv_bn_relu", "mlp_gelu", "layer_norm", "softmax"])
def test_the_onnx_written_equals_torchs_own_registry_s(monkeypatch, name):
    case = next(c for c in CASES if c.name == name)
    module, inputs = case.build()
    program = torch.export.export(module, inputs).run_decompositions()
    with_shared = export_onnx(program).model.SerializeToString()
    monkeypatch.setattr(ONNXRegistry, "from_torchlib", classmethod(shared().build))
    assert export_onnx(program).model.SerializeToString() == with_shared
