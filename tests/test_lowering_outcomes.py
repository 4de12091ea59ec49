"""Lowering's outcomes are types (outcomes.py): each partition compiles to `Compiled`,
`FellBack` (with its backend and reason) or `DeclinedNodes`, and the report reads their
fields; its JSON keeps the shape `edgeport explain` shows."""

import time

import torch
from torch_backend import TorchOpsBackend, registry_with

from edgeport.lowering import LoweringSettings, _Method, compile_partition, place
from edgeport.outcomes import Compiled, DeclinedNodes, FellBack
from edgeport.partitioners.policy import PORTABLE


class _Model(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2 - 1


def _method(backend, settings=LoweringSettings()):
    program = torch.export.export(_Model(), (torch.randn(2, 3),)).run_decompositions()
    return _Method("forward", program, {backend.name: backend}, {backend.name: backend.options()}, settings)


def _delegated(method):
    placement = place(method, list(method.program.graph.nodes))
    return placement, next(p for p in placement.plan.partitions if p.backend != PORTABLE)


def test_a_compiled_partition_is_compiled_with_its_artifact():
    placement, partition = _delegated(_method(TorchOpsBackend()))
    assert isinstance(placement.outcome(partition), Compiled) and placement.outcome(partition).artifact.data
    assert placement.fallbacks() == {}


def test_a_failed_compile_falls_back_with_its_backend_and_reason():
    placement, partition = _delegated(_method(TorchOpsBackend(fail_compile=True)))
    fell_back = FellBack("torchops", "compile failed: RuntimeError: planted compile failure")
    assert placement.outcome(partition) == fell_back
    assert placement.fallbacks() == {partition.id: fell_back}


def test_refused_nodes_are_declined_nodes_of_their_backend_and_proposed_again():
    method = _method(TorchOpsBackend(decline_on_compile=("mul",)))
    first = next(p for p in _delegated(_method(TorchOpsBackend()))[0].plan.partitions if p.backend != PORTABLE)
    assert compile_partition(method, first) == DeclinedNodes("torchops", {"mul": "refused at compile time"})
    placement, _ = _delegated(method)
    assert placement.matrix.reasons("mul") == {"torchops": "refused at compile time"}


def test_the_report_keeps_its_json_shape_for_a_fallback():
    import edgeport

    backend = TorchOpsBackend(fail_compile=True)
    report = edgeport.export(_Model(), (torch.randn(2, 3),), ["torchops"], registry=registry_with(backend)).report()
    (partition,) = [p for p in report["partitions"] if p["fallback"]]
    assert partition["fallback"] == "torchops: compile failed: RuntimeError: planted compile failure"
    relu = next(n for n in report["nodes"] if n["op"] == "aten.relu.default")
    assert relu["reasons"] == {"torchops": "compile failed: RuntimeError: planted compile failure"}


class _SlowBackend(TorchOpsBackend):
    def compile(self, program, options):
        time.sleep(0.2)
        return super().compile(program, options)


def test_the_report_times_each_compile_call():
    """A vendor's slow compile is named by partition (JSON compile_s, explain's column)."""
    import edgeport

    for backend in (_SlowBackend(), _SlowBackend(fail_compile=True)):
        report = edgeport.export(_Model(), (torch.randn(2, 3),), ["torchops"], registry=registry_with(backend)).report()
        (compiled,) = [p for p in report["partitions"] if p["compile_s"] is not None]
        assert 0.2 <= compiled["compile_s"] < 10
        assert all(p["compile_s"] is None for p in report["partitions"] if p is not compiled)
