"""Row updates of program state: a buffer written with index_copy_ is written row by row,
in place, and can live in the delegate's own input buffer (no copy per call)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import edgeport
from edgeport import ProgramError
from edgeport.backend import WEIGHT_CACHE_KEY
from edgeport.backends.cpu import CpuBackend
from edgeport.manifest import RowUpdate
from edgeport.testing import registry_for

from program_zip import pack, unpack


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


class CountedRows(Rows):
    """Rows written row by row, and a counter written whole, in one call."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x, positions):
        self.calls.add_(1)
        return super().forward(x, positions) + self.calls


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


def test_a_call_whose_positions_miss_the_state_changes_no_state(registry):
    """The counter was written before the rows were refused: state is updated per call,
    whole or not at all."""
    program = export(CountedRows(), registry)
    plan = program.manifest.methods["step"]
    assert plan.state_writes and plan.row_updates
    program(torch.randn(2, 3, 8), torch.arange(3))
    state = {fqn: value.clone() for fqn, value in program.runtime().state.items()}
    with pytest.raises(edgeport.ExecutionError, match="do not fit state 'cache'"):
        program(torch.randn(2, 3, 8), torch.tensor([14, 15, 16]))
    assert all(torch.equal(program.runtime().state[fqn], value) for fqn, value in state.items())


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


ROW_UPDATE_EDITS = {  # Rows: rows "new" (2, 3, 8) into cache (2, 16, 8) at positions (3,), along dim 1
    "a dim the state lacks": ({"dim": 3}, "writes along dim 3, which its 3-dim state lacks"),
    "a dim the rows do not fit": ({"dim": 2}, "does not fit the state's float32\\[2, 16, 8\\] along dim 2"),
    "the method's output as rows": ({"rows": "sum_1"}, "writes 'sum_1', float32\\[2, 3\\], which does not fit"),
    "float positions": ({"positions": "x"}, "takes positions 'x', float32\\[2, 3, 8\\], not a one-dim integer"),
}


@pytest.mark.parametrize("edit, message", ROW_UPDATE_EDITS.values(), ids=ROW_UPDATE_EDITS.keys())
def test_a_row_update_edited_to_miss_its_state_is_refused_at_load(registry, tmp_path, edit, message):
    """Such an edit used to load and fail at the first call as an ExecutionError."""
    path = tmp_path / "rows.edgeport"
    export(Rows(), registry).save(path)
    manifest, files = unpack(path.read_bytes())
    (update,) = manifest["methods"]["step"]["row_updates"]
    update.update(edit)
    path.write_bytes(pack(manifest, files))
    with pytest.raises(ProgramError, match=message):
        edgeport.load(path, registry=registry)


class Prefix(torch.nn.Module):
    """A sequence-major "cache" attended over its first W rows only (W = the window's
    length), then written at the chunk's positions: how the cpu LLM reads its KV cache."""

    def __init__(self, n: int = 16, d: int = 8):
        super().__init__()
        self.register_buffer("cache", torch.zeros(n, 2, d))
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x, positions, window):  # x (T, 2, d), positions (T,), window (W,)
        new = self.proj(x)
        old = self.cache[: window.shape[0]]  # (W, 2, d)
        out = torch.bmm(new.transpose(0, 1), old.permute(1, 2, 0)).sum(-1)  # (2, T)
        self.cache.index_copy_(0, positions, new)
        return out


def export_prefix(module, registry):
    T, W = torch.export.Dim("T", min=1, max=8), torch.export.Dim("W", min=1, max=16)
    inputs = (torch.randn(3, 2, 8), torch.arange(3), torch.arange(16))
    return edgeport.export_methods({"step": (module, inputs, ({0: T}, {0: T}, {0: W}))}, ["cpu"], registry=registry)


def _calls(module):
    """Chunks at growing positions, each attending over a window covering the rows before it."""
    for start, T, W in ((0, 3, 4), (3, 2, 4), (5, 1, 8), (6, 1, 16)):
        yield torch.randn(T, 2, 8), torch.arange(start, start + T), torch.arange(W)


def test_a_state_read_as_its_first_rows_is_a_state_prefix_not_a_sliced_copy(registry):
    program = export_prefix(Prefix(), registry)
    plan = program.manifest.methods["step"]
    assert [(p.value, p.length_of, p.length_dim) for p in plan.state_prefixes] == [("b_cache", "window", 0)]
    assert [(u.state, u.dim) for u in plan.row_updates] == [("cache", 0)]
    assert "aten.slice.Tensor" not in {n["op"] for n in program.report("step")["nodes"]}
    (step,) = plan.steps
    assert "b_cache" in step.inputs  # the delegate reads the state itself, at the window's rows


@pytest.mark.parametrize("compiled", [False, True], ids=["interpreter", "compiled model in place"])
def test_state_prefixes_give_the_eager_results_and_the_compiled_model_binds_them_in_place(registry, tmp_path,
                                                                                          compiled):
    module = Prefix()
    reference = copy.deepcopy(module)
    program = export_prefix(module, registry)
    if compiled:  # as an LLM session loads it: LiteRT's compiled model, the state placed in its buffer
        path, info = next(iter(program.manifest.artifacts.items()))
        program.manifest.artifacts[path] = dataclasses.replace(
            info, metadata={**info.metadata, WEIGHT_CACHE_KEY: program.manifest.files[path].sha256})
    runtime = program.runtime()
    if compiled:
        assert runtime.place_state("step") == ["cache"]
        executable = runtime._methods["step"][1][0].executable  # noqa: SLF001 - the delegate under test
        index = runtime._methods["step"][1][0].step.inputs.index("b_cache")  # noqa: SLF001
        assert executable.input_buffer(index, (16, 2, 8)).ctypes.data == runtime.state["cache"].data_ptr()
    for x, positions, window in _calls(module):
        assert torch.allclose(program(x, positions, window), reference(x, positions, window), atol=1e-5)
    assert torch.allclose(runtime.state["cache"], reference.cache, atol=1e-5)


class Layers(torch.nn.Module):
    """Sixteen `Prefix` caches of 16 MiB each, as the layers of an LLM have theirs (under
    32 MiB, which malloc serves from its heap once such blocks have been freed)."""

    def __init__(self, layers: int = 16, n: int = 1 << 18, d: int = 8):
        super().__init__()
        self.layers = torch.nn.ModuleList(Prefix(n, d) for _ in range(layers))

    def forward(self, x, positions, window):
        return sum(layer(x + i, positions, window) for i, layer in enumerate(self.layers))


@pytest.mark.parametrize("arrays", ["auto", "numpy"], ids=["torch state", "numpy state"])
def test_an_empty_cache_placed_in_the_compiled_model_stays_unwritten_until_rows_are(registry, arrays):
    """Placing caches of zeros wrote every page at load: the zeros were copied into each
    delegate buffer, which np.zeros took from malloc, whose heap clears what it reuses
    (SmolLM2 at 8,192 positions held its 360 MiB cache before the first token)."""
    module = Layers()
    reference = copy.deepcopy(module)
    T, W = torch.export.Dim("T", min=1, max=8), torch.export.Dim("W", min=1, max=1 << 18)
    inputs = (torch.randn(3, 2, 8), torch.arange(3), torch.arange(16))
    program = edgeport.export_methods({"step": (module, inputs, ({0: T}, {0: T}, {0: W}))}, ["cpu"],
                                      registry=registry)
    path, info = next(iter(program.manifest.artifacts.items()))
    program.manifest.artifacts[path] = dataclasses.replace(
        info, metadata={**info.metadata, WEIGHT_CACHE_KEY: program.manifest.files[path].sha256})
    before = _resident_mib()
    runtime = program.runtime(arrays)
    assert len(runtime.place_state("step")) == 16
    # of 256 MiB of caches; LiteRT, XNNPACK and the run take 10-40 of their own (40 within the whole suite)
    assert _resident_mib() - before < 96
    for x, positions, window in _calls(module):
        inputs = (x, positions, window) if arrays == "auto" else (x.numpy(), positions.numpy(), window.numpy())
        assert torch.allclose(torch.as_tensor(program(*inputs)), reference(x, positions, window), atol=1e-4)
    for i, layer in enumerate(reference.layers):
        assert torch.allclose(torch.as_tensor(runtime.state[f"layers.{i}.cache"]), layer.cache, atol=1e-5)


def _resident_mib() -> int:
    """This process's resident anonymous and shared memory, in MiB."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return sum(int(fields[key].split()[0]) for key in ("RssAnon", "RssShmem")) >> 10


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("positions", [[5], [2, 3, 4], [4, 1], [6, 7, 7]],
                         ids=["one", "a run", "out of order", "a padded chunk's repeats"])
def test_apply_row_updates_writes_the_rows_at_their_positions(kind, positions):
    import numpy as np

    from edgeport.state_rows import apply_row_updates

    cache = np.zeros((2, 8, 3), dtype=np.float32)
    rows = np.arange(2 * len(positions) * 3, dtype=np.float32).reshape(2, len(positions), 3) + 1
    expected = cache.copy()
    for i, p in enumerate(positions):  # in order: a repeated position keeps its last rows
        expected[:, p] = rows[:, i]
    state = {"cache": cache if kind == "numpy" else torch.from_numpy(cache)}
    values = {"rows": rows, "positions": np.array(positions) if kind == "numpy" else torch.tensor(positions)}
    apply_row_updates(state, [RowUpdate(state="cache", dim=1, positions="positions", rows="rows")], values)
    assert np.array_equal(cache, expected)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("positions", [[8], [7, 8], [9, 2], [-1], [3, -1], [-2, -1]])
def test_rows_beyond_a_state_are_an_execution_error(kind, positions):
    import numpy as np

    from edgeport.state_rows import apply_row_updates

    cache = np.zeros((2, 8, 3), dtype=np.float32)
    state = {"cache": cache if kind == "numpy" else torch.from_numpy(cache)}
    values = {"rows": np.ones((2, len(positions), 3), dtype=np.float32),
              "positions": np.array(positions) if kind == "numpy" else torch.tensor(positions)}
    with pytest.raises(edgeport.ExecutionError, match=r"do not fit state 'cache', \(2, 8, 3\) along dim 1"):
        apply_row_updates(state, [RowUpdate(state="cache", dim=1, positions="positions", rows="rows")], values)
    assert not cache.any()  # no row written: numpy counted -1 from the end and wrote the last row
