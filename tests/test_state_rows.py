"""Row updates of program state: a buffer written with index_copy_ is written row by row,
in place, and can live in the delegate's own input buffer (no copy per call)."""

from __future__ import annotations

import copy

import pytest
import torch

import edgeport
from edgeport import ProgramError
from edgeport.backends.cpu import CpuBackend
from edgeport.manifest import RowUpdate
from edgeport.testing import registry_for


class Rows(torch.nn.Module):
    """A tiny "cache": reads its rows before the call's, then writes the new rows."""

    def __init__(self, n: int = 16, d: int = 8):
        super().__init__()
        self.register_buffer("cache", torch.zeros(2, n, d))
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x, positions):  # x (2, T, d), positions (T,)
        new = self.proj(x)
        out = torch.bmm(new, self.cache.transpose(1, 2)).sum(-1)  # reads the old cache only
        self.cache.index_copy_(1, positions, new)
        return out


class ReadsTheNewCache(Rows):
    def forward(self, x, positions):
        self.cache.index_copy_(1, positions, self.proj(x))
        return self.cache.sum(-1)  # reads the updated buffer: the update must stay whole


@pytest.fixture(scope="module")
def registry():
    return registry_for(CpuBackend())


def export(module, registry, T=3):
    inputs = (torch.randn(2, T, 8), torch.arange(T))
    return edgeport.export_methods({"step": (module, inputs)}, ["cpu"], registry=registry)


def test_an_index_copy_into_a_buffer_becomes_a_row_update_not_a_full_write(registry):
    program = export(Rows(), registry)
    plan = program.manifest.methods["step"]
    assert plan.state_writes == {}
    assert [(u.state, u.dim, u.positions) for u in plan.row_updates] == [("cache", 1, "positions")]
    assert {n["backend"] for n in program.report("step")["nodes"]} == {"cpu"}


def test_row_updates_give_the_eager_results_call_after_call(registry, tmp_path):
    module = Rows()
    reference = copy.deepcopy(module)
    export(module, registry).save(tmp_path / "rows.edgeport")
    loaded = edgeport.load(tmp_path / "rows.edgeport", registry=registry)
    for start in (0, 3, 6, 1):
        x, positions = torch.randn(2, 3, 8), torch.arange(start, start + 3)
        assert torch.allclose(loaded(x, positions), reference(x, positions), atol=1e-5)
    assert torch.allclose(loaded.runtime().state["cache"], reference.cache, atol=1e-5)


def test_placed_state_is_the_delegates_own_input_buffer_and_stays_correct(registry):
    module = Rows()
    reference = copy.deepcopy(module)
    program = export(module, registry)
    runtime = program.runtime()
    runtime.state["cache"].copy_(torch.randn(2, 16, 8))
    reference.cache.copy_(runtime.state["cache"])
    assert runtime.place_state("step") == ["cache"]
    assert torch.equal(runtime.state["cache"], reference.cache)  # moved with its contents
    executable = runtime._methods["step"][1][0].executable  # noqa: SLF001 - the delegate under test
    index = next(d["index"] for d in executable.interpreter.get_input_details() if "cache" in d["name"])
    view = executable.interpreter.tensor(index)()
    assert view.ctypes.data == runtime.state["cache"].data_ptr()  # the state is the interpreter's input
    del view  # LiteRT refuses to invoke while a view it handed out is alive
    for start in (0, 3, 5):
        x, positions = torch.randn(2, 3, 8), torch.arange(start, start + 3)
        assert torch.allclose(program(x, positions), reference(x, positions), atol=1e-5)
    assert torch.allclose(runtime.state["cache"], reference.cache, atol=1e-5)


def test_a_buffer_read_after_its_write_keeps_a_full_write(registry):
    plan = export(ReadsTheNewCache(), registry).manifest.methods["step"]
    assert plan.row_updates == () and list(plan.state_writes.values()) == ["cache"]


def test_a_row_update_of_unknown_state_is_refused_at_load(registry):
    program = export(Rows(), registry)
    plan = program.manifest.methods["step"]
    bad = RowUpdate("no.such.buffer", 1, "positions", plan.row_updates[0].rows)
    program.manifest.methods["step"] = type(plan)(**{**plan.__dict__, "row_updates": (bad,)})
    with pytest.raises(ProgramError, match="unknown state 'no.such.buffer'"):
        program.runtime()
