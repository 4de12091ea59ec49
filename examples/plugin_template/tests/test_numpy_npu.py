"""The template plugin's own tests: it is discovered through its entry point, and a
model lowered to it matches eager."""

import json
import subprocess
import sys

import torch

import edgeport
import edgeport_numpy_npu
from edgeport.testing import installed_backends, registered_by


def test_plugin_registers_numpy_npu():
    assert isinstance(registered_by(edgeport_numpy_npu)["numpy_npu"], edgeport_numpy_npu.NumpyNpuBackend)


def test_edgeport_backends_lists_it():
    assert installed_backends()["numpy_npu"]["distribution"] == "edgeport-numpy-npu"


def test_the_cli_finds_it_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "edgeport.cli", "backends", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert "numpy_npu" in {b["name"] for b in json.loads(out)["backends"]}


def test_lowered_model_matches_eager():
    class Model(torch.nn.Module):
        def forward(self, x, y):
            return torch.relu(x * y - x) + torch.sigmoid(y)  # sigmoid stays portable

    model, inputs = Model(), (torch.randn(2, 8), torch.randn(2, 8))
    program = edgeport.export(model, inputs, ["numpy_npu"])
    placed = {n["op"]: n["backend"] for n in program.report()["nodes"]}
    assert placed["aten.relu.default"] == "numpy_npu"
    assert placed["aten.sigmoid.default"] == "portable"
    torch.testing.assert_close(program(*inputs), model(*inputs))
