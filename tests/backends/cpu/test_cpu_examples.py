"""The four example models lowered by the cpu backend through edgeport's pipeline."""

from __future__ import annotations


import pytest
import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import compare, registry_for
from example_models import load_example

MODELS = ("mobilenet_v2", "resnet18", "transformer_encoder", "tiny_llama")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_example_lowers_whole_and_matches_eager(name):
    model, inputs = load_example(name)
    program = edgeport.export(model, inputs, ["cpu"], registry=registry_for(CpuBackend()))
    steps = program.manifest.methods["forward"].steps
    assert [(s.kind, s.backend) for s in steps] == [("delegate", "cpu")]
    with torch.no_grad():
        assert compare(program(*inputs), model(*inputs)) <= 1e-4
    ops = next(iter(program.manifest.artifacts.values())).metadata["ops"]
    if name == "mobilenet_v2":
        assert ops.get("TRANSPOSE", 0) <= 2
        assert "MUL" not in ops and "RELU6" not in ops  # batch norms folded, ReLU6 fused
