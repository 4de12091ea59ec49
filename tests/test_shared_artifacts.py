"""Methods that share weights share one artifact: the cpu backend merges its partitions of
every method into one TFLite model (a subgraph each, weights once)."""

from __future__ import annotations

import flatbuffers
import pytest
import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.tflite.schema import tfl
from edgeport.testing import registry_for
from program_zip import pack, unpack


class Shared(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(256, 512)

    def forward(self, x):
        return torch.relu(self.proj(x))


def test_two_methods_on_one_weight_are_one_artifact_with_an_entry_each(tmp_path):
    module = Shared()
    registry = registry_for(CpuBackend())
    one, many = torch.randn(1, 256), torch.randn(16, 256)
    program = edgeport.export_methods({"one": (module, (one,)), "many": (module, (many,))}, ["cpu"], registry=registry)
    assert list(program.manifest.artifacts) == ["artifacts/cpu.tflite"]
    assert [program.manifest.methods[m].steps[0].entry for m in ("one", "many")] == [0, 1]
    weight_bytes = 256 * 512 * 4
    assert weight_bytes < len(program.files["artifacts/cpu.tflite"]) < 1.2 * weight_bytes  # stored once
    program.save(tmp_path / "shared.edgeport")
    loaded = edgeport.load(tmp_path / "shared.edgeport", registry=registry)
    with torch.no_grad():
        for method, x in (("one", one), ("many", many), ("one", one)):
            assert torch.allclose(loaded.run(x, method=method).outputs, module(x), atol=1e-5)


def test_a_second_subgraph_litert_cannot_prepare_is_a_program_error_before_any_call(tmp_path):
    """An edit re-sealed with fresh checksums inside the merged model's second subgraph
    (its weight's shape transposed) used to load and then fail that method's first call
    with LiteRT's RuntimeError: every subgraph is now prepared with the first."""
    module = Shared()
    registry = registry_for(CpuBackend())
    program = edgeport.export_methods({"one": (module, (torch.randn(1, 256),)),
                                       "many": (module, (torch.randn(16, 256),))}, ["cpu"], registry=registry)
    program.save(tmp_path / "shared.edgeport")
    manifest, files = unpack((tmp_path / "shared.edgeport").read_bytes())
    model = tfl().ModelT.InitFromObj(tfl().Model.GetRootAs(files["artifacts/cpu.tflite"], 0))
    weight = next(t for t in model.subgraphs[1].tensors if t.name == b"linear/weight")
    weight.shape = list(reversed(weight.shape))
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"TFL3")
    files["artifacts/cpu.tflite"] = bytes(builder.Output())
    (tmp_path / "edited.edgeport").write_bytes(pack(manifest, files, relist=True))
    loaded = edgeport.load(tmp_path / "edited.edgeport", registry=registry)
    with pytest.raises(edgeport.ProgramError, match="cannot load partition 0.*FULLY_CONNECTED"):
        loaded.run(torch.randn(1, 256), method="one")


def test_a_backend_that_cannot_merge_keeps_one_artifact_per_method(torchops):
    backend, registry = torchops
    module = torch.nn.Sequential(torch.nn.ReLU())
    x = torch.randn(4)
    program = edgeport.export_methods({"a": (module, (x,)), "b": (module, (x * 2,))}, [backend.name],
                                      registry=registry)
    steps = [s for plan in program.manifest.methods.values() for s in plan.steps if s.kind == "delegate"]
    assert len(program.manifest.artifacts) == len(steps) == 2 and all(s.entry is None for s in steps)


def test_a_merge_that_raises_is_a_backend_error_naming_the_backend():
    """It was edgeport's "internal error: RuntimeError: ... please report it"."""
    from torch_backend import TorchOpsBackend, registry_with

    class LinkerFails(TorchOpsBackend):
        def merge(self, artifacts):
            raise RuntimeError("npu linker failed")

    backend = LinkerFails()
    registry = registry_with(backend)
    module, x = torch.nn.Sequential(torch.nn.ReLU()), torch.randn(4)
    with pytest.raises(edgeport.BackendError, match="^backend 'torchops': merge\\(\\) raised RuntimeError: npu linker "
                                                    "failed$") as info:
        edgeport.export_methods({"a": (module, (x,)), "b": (module, (x * 2,))}, [backend.name], registry=registry)
    assert info.value.hint.startswith("a bug in the backend")


def test_check_runs_each_entry_of_a_merged_artifact():
    from edgeport.devtools.check import check_program

    module = Shared()
    registry = registry_for(CpuBackend())
    one, many = torch.randn(1, 256), torch.randn(16, 256)
    program = edgeport.export_methods({"one": (module, (one,)), "many": (module, (many,))}, ["cpu"],
                                      keep_reference=True, registry=registry)
    for method, x in (("one", one), ("many", many)):
        report = check_program(program, [x], method=method, registry=registry)
        assert report.passed and [p.status for p in report.partitions] == ["pass"]
