"""A backend's compile may refuse nodes (DeclineNodes); lowering must then make progress."""

import torch
import torch.nn.functional as F

import edgeport
from torch_backend import TorchOpsBackend, registry_with


class PoolWithIndices(torch.nn.Module):
    def forward(self, x):
        return F.max_pool2d(x, 3, 2, 1, return_indices=True)


def test_a_tuple_element_refused_at_compile_time_declines_the_op_producing_it():
    # A getitem always runs where its producer runs, so declining the getitem alone put
    # it back into the same partition 32 times, then failed the export (seen on coreml).
    backend = TorchOpsBackend(ops=("max_pool2d_with_indices",), decline_on_compile=("getitem_1",))
    module, x = PoolWithIndices(), torch.randn(1, 2, 8, 8)
    program = edgeport.export(module, (x,), ["torchops"], registry=registry_with(backend))
    (pool,) = [n for n in program.report()["nodes"] if n["op"] == "aten.max_pool2d_with_indices.default"]
    assert pool["backend"] == "portable" and pool["reasons"]["torchops"] == "refused at compile time"
    (values, indices), (want_values, want_indices) = program(x), module(x)
    torch.testing.assert_close(values, want_values)
    assert torch.equal(indices, want_indices)
