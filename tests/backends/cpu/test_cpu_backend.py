"""The cpu backend as a plugin and through edgeport's pipeline: registration, options,
export/run/save/load, fp16, and the shared conformance cases."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeport
import edgeport.backends.cpu as cpu_plugin
from edgeport.backends.cpu import CpuBackend, CpuOptions
from edgeport.testing import CASES, compare, installed_backends, registered_by, registry_for
from edgeport.testing.kit import Verdict, run_kit
from writer_declines import PARTITION_RULE, WRITER_DECLINES, writer_reason_expected


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyCnn().eval(), (torch.randn(1, 3, 16, 16),)


def export(module, inputs, **options):
    backend = CpuBackend()
    return edgeport.export(module, inputs, ["cpu"], options={"cpu": options}, registry=registry_for(backend))


def test_plugin_registers_the_cpu_backend():
    assert isinstance(registered_by(cpu_plugin)["cpu"], CpuBackend)


def test_edgeport_backends_lists_cpu():
    listed = installed_backends()["cpu"]
    assert listed["distribution"] == "edgeport"


@pytest.mark.slow
def test_import_is_cheap():
    """Importing the plugin loads neither LiteRT nor its schema."""
    script = "import sys, edgeport.backends.cpu\nprint(any(m.startswith('ai_edge_litert') for m in sys.modules))\n"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "False\n"


def test_availability_version_options_and_kept_ops():
    backend = CpuBackend()
    assert backend.availability() == edgeport.Availability(True, True)
    assert backend.version.startswith("ai-edge-litert ")
    assert CpuOptions() == CpuOptions(threads=0, precision="fp32", winograd=True)
    assert torch.ops.aten.scaled_dot_product_attention.default in backend.keep_ops()


def test_export_runs_as_one_delegated_partition(tiny):
    module, inputs = tiny
    program = export(module, inputs, threads=2)
    steps = program.manifest.methods["forward"].steps
    assert [s.kind for s in steps] == ["delegate"] and steps[0].backend == "cpu"
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < 1e-4
    artifact = next(iter(program.manifest.artifacts.values()))
    assert artifact.metadata["transposed_inputs"] == ["x"] and artifact.metadata["ops"]["TRANSPOSE"] == 1


def test_saved_program_loads_and_runs(tiny, tmp_path):
    module, inputs = tiny
    export(module, inputs).save(tmp_path / "m.edgeport")
    loaded = edgeport.load(tmp_path / "m.edgeport", registry=registry_for(CpuBackend()))
    with torch.no_grad():
        assert compare(loaded(*inputs), module(*inputs)) < 1e-4


@pytest.mark.parametrize("threads", [-1, 2**31])
def test_a_saved_thread_count_out_of_range_is_a_program_error(tiny, tmp_path, threads):
    """An edited (and re-sealed) manifest must not reach LiteRT with a value it crashes on."""
    from program_zip import pack, unpack

    module, inputs = tiny
    export(module, inputs).save(tmp_path / "m.edgeport")
    manifest, files = unpack((tmp_path / "m.edgeport").read_bytes())
    for artifact in manifest["artifacts"].values():
        artifact["options"]["threads"] = threads
    (tmp_path / "edited.edgeport").write_bytes(pack(manifest, files))
    loaded = edgeport.load(tmp_path / "edited.edgeport", registry=registry_for(CpuBackend()))
    with pytest.raises(edgeport.ProgramError, match="cpu.threads=.* is out of range"):
        loaded(*inputs)


def test_fp16_precision_within_its_stated_tolerance(tiny):
    """fp16 weights (and fp16 arithmetic where the CPU has it): 1e-2 relative."""
    module, inputs = tiny
    program = export(module, inputs, precision="fp16")
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < 1e-2


@pytest.mark.parametrize("options, algorithm", [
    ({}, "BATCH_MATMUL"),  # Winograd by default
    ({"winograd": "false"}, "CONV_2D"),  # as the CLI passes it: --option cpu.winograd=false
    ({"precision": "fp16"}, "CONV_2D"),  # fp32 only
])
def test_large_3x3_convolutions_are_winograd_unless_turned_off(options, algorithm):
    torch.manual_seed(0)
    module, inputs = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()).eval(), (torch.randn(1, 64, 28, 28),)
    program = export(module, inputs, **options)
    ops = next(iter(program.manifest.artifacts.values())).metadata["ops"]
    assert algorithm in ops
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < (1e-2 if options.get("precision") else 1e-5)


def test_unknown_precision_is_an_error_naming_the_choices(tiny):
    module, inputs = tiny
    with pytest.raises(edgeport.BackendError, match="option cpu.precision='int8' is not one of: fp32, fp16"):
        edgeport.export(module, inputs, ["cpu"], options={"cpu": {"precision": "int8"}},
                        registry=registry_for(CpuBackend()))


class Sandwich(nn.Module):
    """cpu work, an op the writer lacks (atan), more cpu work: two partitions around it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.atan(F.relu(self.conv(x)))
        return self.fc(y.mean((2, 3)))


def test_unsupported_op_splits_the_graph_and_the_pieces_still_match():
    torch.manual_seed(0)
    module, inputs = Sandwich().eval(), (torch.randn(1, 3, 8, 8),)
    program = export(module, inputs)
    steps = program.manifest.methods["forward"].steps
    assert [(s.kind, s.backend) for s in steps] == [("delegate", "cpu"), ("portable", None), ("delegate", "cpu")]
    atan = next(n for n in program.report()["nodes"] if n["op"] == "aten.atan.default")
    assert atan["reasons"]["cpu"] == "no TFLite lowering for aten.atan.default"
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < 1e-4


@pytest.mark.parametrize("backend", ["cpu", "mediatek"])
def test_a_matmul_of_empty_tensors_stays_portable_and_runs(backend):
    # Found by the OpInfo sweep (linalg.pinv of a (3, 0) matrix): XNNPACK cannot prepare a
    # model holding a zero-size tensor, so the program failed to load.
    class EmptyMatmul(nn.Module):
        def forward(self, a, b):
            return a @ b.t() + 1

    from edgeport.backends.mediatek import MediatekBackend

    module, inputs = EmptyMatmul(), (torch.randn(3, 0), torch.randn(3, 0))
    chosen = {"cpu": CpuBackend, "mediatek": MediatekBackend}[backend]()
    program = edgeport.export(module, inputs, [backend], registry=registry_for(chosen))
    reasons = {n["op"]: n["reasons"].get(backend, "") for n in program.report()["nodes"] if n["backend"] != backend}
    assert "zero-size tensor" in reasons["aten.mm.default"]
    assert compare(program(*inputs), module(*inputs)) == 0.0


@pytest.mark.parametrize("backend", ["cpu", "mediatek"])
def test_logsumexp_of_a_0d_tensor_stays_portable_and_runs(backend):
    # Found by the OpInfo sweep: its amax/sum over dim 0 of a 0-d tensor failed to compile
    # (IndexError in the writer) and fell back.
    class LogSumExp(nn.Module):
        def forward(self, x):
            return torch.logsumexp(x, 0, keepdim=True)

    from edgeport.backends.mediatek import MediatekBackend

    module, inputs = LogSumExp(), (torch.tensor(0.7),)
    chosen = {"cpu": CpuBackend, "mediatek": MediatekBackend}[backend]()
    program = edgeport.export(module, inputs, [backend], registry=registry_for(chosen))
    assert [p["fallback"] for p in program.report()["partitions"] if p["fallback"]] == []
    reasons = {n["op"]: n["reasons"].get(backend, "") for n in program.report()["nodes"] if n["backend"] != backend}
    assert "0-d tensor" in reasons["aten.amax.default"]
    assert compare(program(*inputs), module(*inputs)) < 1e-6


@pytest.mark.parametrize("backend", ["cpu", "mediatek"])
def test_a_linear_of_a_1d_input_is_decomposed_and_runs(backend):
    # Found by the OpInfo sweep: the writer's matmul failed on a 1-d input and fell back;
    # declined whole, the linear is decomposed at capture and its pieces are taken.
    from edgeport.backends.mediatek import MediatekBackend

    class Linear(nn.Module):
        def forward(self, x, w, b):  # the weight an input, as in torch's OpInfo sample
            return F.linear(x, w, b)

    module, inputs = Linear(), (torch.randn(3), torch.randn(4, 3), torch.randn(4))
    chosen = {"cpu": CpuBackend, "mediatek": MediatekBackend}[backend]()
    program = edgeport.export(module, inputs, [backend], registry=registry_for(chosen))
    assert [p["fallback"] for p in program.report()["partitions"] if p["fallback"]] == []
    assert {n["backend"] for n in program.report()["nodes"]} == {backend}  # decomposed, then taken
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < 1e-6


def test_a_lone_reshape_stays_portable():
    module = nn.Flatten()
    program = export(module, (torch.randn(2, 3, 4),))
    assert [s.kind for s in program.manifest.methods["forward"].steps] == ["portable"]
    assert "never takes alone" in program.report()["nodes"][0]["reasons"]["cpu"]


@pytest.mark.slow
def test_every_conformance_case_passes_the_kit_and_is_taken_whole_unless_the_writer_declines_it():
    """The conformance kit's verdicts, as `pytest --edgeport-backend cpu` gives them: no
    case fails (a partition that fails to compile, or an answer off by more than the
    cpu's declared tolerance), and every node of every case goes to cpu except those the
    writer declines up front with its reason (writer_declines.py)."""
    run = run_kit(CpuBackend(), cases=CASES)  # quantized cases: test_cpu_quantized.py
    assert len(run.outcomes) == len(CASES)
    assert {o.case: o.message for o in run.outcomes if o.verdict is Verdict.FAILED} == {}
    for o in run.outcomes:
        declined = {op: reason for op, reason in o.declined.items() if PARTITION_RULE not in reason}
        assert set(declined) == set(WRITER_DECLINES.get(o.case, {})), (o.case, declined)
        assert all(writer_reason_expected(o.case, op, reason) for op, reason in declined.items()), declined
        if o.case not in WRITER_DECLINES:
            assert o.verdict is Verdict.PASSED and o.delegated == 1.0 and not o.declined, (o.case, o.declined)


def test_a_token_id_past_the_table_is_one_execution_error():
    """LiteRT's GATHER refuses an index past its table with a RuntimeError, which came
    out of `edgeport run` as "internal error ... please report it"."""
    program = export(nn.Embedding(10, 4).eval(), (torch.tensor([[1, 2, 3]]),))
    with pytest.raises(edgeport.ExecutionError, match=r"LiteRT could not run the model: .*out of bounds\. Node number"):
        program(torch.tensor([[1, 2, 50]]))
    assert program(torch.tensor([[1, 2, 9]])).shape == (1, 3, 4)  # and it runs on
