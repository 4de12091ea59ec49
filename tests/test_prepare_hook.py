"""`Backend.prepare`: called once per program before `support`, its result reaches every
`support` call as ``ctx.prepared``, and a raising `prepare` declines only its backend."""

import threading

import torch
from torch_backend import TorchOpsBackend, registry_with

import edgeport


class _Model(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x) + x * 2


class _Preparing(TorchOpsBackend):
    def __init__(self, fail: bool = False):
        super().__init__("preparing")
        self.fail = fail
        self.prepared: list[int] = []
        self.seen: set = set()
        self.lock = threading.Lock()

    def prepare(self, program, options):
        if self.fail:
            raise RuntimeError("planted prepare failure")
        with self.lock:
            self.prepared.append(id(program))
        return {"nodes": len(program.graph.nodes)}

    def support(self, node, ctx):
        self.seen.add(repr(ctx.prepared))
        return super().support(node, ctx)


def test_prepare_runs_once_per_program_and_support_sees_its_result():
    backend = _Preparing()
    program = edgeport.export(_Model(), (torch.randn(2, 3),), backends=["preparing"], registry=registry_with(backend))
    assert len(backend.prepared) == 1  # the lowered program's; it keeps no ops at capture, so nothing asks there
    assert "None" not in backend.seen and len(backend.seen) >= 1
    assert [s.backend for s in program.manifest.methods["forward"].steps] == ["preparing"]


def test_a_raising_prepare_declines_its_nodes_with_the_error_and_the_export_goes_on():
    backend = _Preparing(fail=True)
    program = edgeport.export(_Model(), (torch.randn(2, 3),), backends=["preparing"], registry=registry_with(backend))
    rows = program.manifest.report["forward"]["nodes"]
    assert rows and all(r["backend"] == "portable" for r in rows)
    assert all(r["reasons"]["preparing"] == "prepare() raised RuntimeError: planted prepare failure" for r in rows)
    x = torch.randn(2, 3)
    torch.testing.assert_close(program.run(x).outputs, _Model()(x))


def test_the_cpu_backend_prepares_the_writer_context_support_reads():
    from edgeport.backends import tflite
    from edgeport.backends.cpu.backend import CpuBackend

    program = torch.export.export(_Model(), (torch.randn(2, 3),)).run_decompositions()
    backend = CpuBackend()
    prepared = backend.prepare(program, backend.options())
    assert isinstance(prepared, tflite.WriterContext)
    ctx = edgeport.SupportContext(program, backend.options(), prepared)
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    assert all(backend.support(n, ctx) for n in nodes)
    assert "view_constants" in vars(prepared)  # worked out once, kept on the context, not in a module cache


def test_export_warns_once_naming_a_backend_whose_prepare_or_support_raised(caplog):
    """As a failed compile is warned of: the export goes on, but the plugin's bug is said."""
    class Raising(TorchOpsBackend):
        def support(self, node, ctx):
            raise RuntimeError("planted support failure")

    for backend, error in ((_Preparing(fail=True), "prepare() raised RuntimeError: planted prepare failure"),
                           (Raising("raising"), "support() raised RuntimeError: planted support failure")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="edgeport.lowering"):
            program = edgeport.export(_Model(), (torch.randn(2, 3),), backends=[backend.name],
                                      registry=registry_with(backend))
        assert [r.getMessage() for r in caplog.records] == [
            f"backend {backend.name}: {error}; its nodes go to the other backends"]
        assert program.report()["faults"] == {backend.name: error}
