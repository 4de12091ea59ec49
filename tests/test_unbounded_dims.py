"""Dynamic dims without an upper bound (torch.export.Dim with no max, and the storage
symbol torch.export makes for an input that is a view) export and run."""

import torch

import edgeport
from torch_backend import TorchOpsBackend, registry_with


class Double(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2


def test_a_dim_without_max_exports_and_runs_at_other_sizes():
    batch = torch.export.Dim("batch")
    program = edgeport.export(Double(), (torch.randn(3, 4),), ["torchops"], dynamic_shapes=({0: batch},),
                              registry=registry_with(TorchOpsBackend()))
    ((low, high),) = program.manifest.methods["forward"].symbols.values()
    assert high is None and low >= 0
    x = torch.randn(11, 4)
    torch.testing.assert_close(program(x), Double()(x))


def test_an_input_that_is_a_view_exports():
    x = torch.arange(1.0, 65.0).reshape(1, 1, 8, 8)  # a view: torch.export adds an unbounded symbol
    program = edgeport.export(Double(), (x,), ["torchops"], registry=registry_with(TorchOpsBackend()))
    torch.testing.assert_close(program(x.clone()), Double()(x))
