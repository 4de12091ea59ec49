"""The four example models lowered by the cpu backend through edgeport's pipeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import compare, registry_for

MODELS_PATH = Path(__file__).resolve().parents[3] / "examples" / "models.py"
MODELS = ("mobilenet_v2", "resnet18", "transformer_encoder", "tiny_llama")


def factory(name: str):
    spec = importlib.util.spec_from_file_location("edgeport_example_models", MODELS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_example_lowers_whole_and_matches_eager(name):
    model, inputs = factory(name)()
    program = edgeport.export(model, inputs, ["cpu"], registry=registry_for(CpuBackend()))
    steps = program.manifest.methods["forward"].steps
    assert [(s.kind, s.backend) for s in steps] == [("delegate", "cpu")]
    with torch.no_grad():
        assert compare(program(*inputs), model(*inputs)) <= 1e-4
    ops = next(iter(program.manifest.artifacts.values())).metadata["ops"]
    if name == "mobilenet_v2":
        assert ops.get("TRANSPOSE", 0) <= 2
        assert "MUL" not in ops and "RELU6" not in ops  # batch norms folded, ReLU6 fused
