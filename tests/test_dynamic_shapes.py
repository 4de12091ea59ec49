"""Dynamic dims (torch.export.Dim) on the backends: resizable TFLite models on cpu and
mediatek (several sizes through one loaded program, equal to eager), declines with
their reason elsewhere, a warning line when a backend declines a dynamic dim, and the
range check on inputs."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.capture import capture
from edgeport.dynamic import infer_view_sizes
from edgeport.errors import InputError, ProgramError
from edgeport.testing import registry_for

from program_zip import pack, unpack

BATCH = torch.export.Dim("batch", min=1, max=64)
SEQ = torch.export.Dim("seq", min=2, max=32)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(y.flatten(1))  # a view of the dynamic batch


class Encoder(nn.Module):
    """A pre-norm encoder block (attention, then a GELU MLP) over a dynamic sequence."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hs)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.norm2(x))


class CausalAttention(nn.Module):
    def forward(self, q):
        return nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True) * 2


MODELS = {  # name -> (model, example input, dynamic shapes, sizes to run: (batch, seq))
    "cnn-batch": (Cnn, (2, 3, 8, 8), ({0: BATCH},), [(1, None), (5, None), (64, None), (5, None)]),
    "encoder-seq": (Encoder, (2, 8, 32), ({1: SEQ},), [(None, 2), (None, 17), (None, 32)]),
}


def _input(shape: tuple[int, ...], size: tuple[int | None, int | None]) -> torch.Tensor:
    batch, seq = size
    shape = list(shape)
    if batch is not None:
        shape[0] = batch
    if seq is not None:
        shape[1] = seq
    return torch.randn(*shape)


def _steps(program) -> list[tuple[str, str | None]]:
    return [(s.kind, s.backend) for s in program.manifest.methods["forward"].steps]


@pytest.fixture(scope="module", params=[(b, m) for b in ("cpu", "mediatek") for m in MODELS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request, tmp_path_factory):
    backend_name, model_name = request.param
    backend = CpuBackend() if backend_name == "cpu" else MediatekBackend()
    make, shape, dynamic, sizes = MODELS[model_name]
    torch.manual_seed(0)
    model = make().eval()
    program = edgeport.export(model, (torch.randn(*shape),), [backend_name], dynamic_shapes=dynamic,
                              registry=registry_for(backend))
    path = tmp_path_factory.mktemp("dynamic") / "m.edgeport"
    program.save(path)
    return backend_name, model, program, edgeport.load(path, registry=registry_for(backend)), shape, sizes


def test_a_dynamic_dim_is_one_delegated_partition(exported):
    backend, _, program, _, _, _ = exported
    assert _steps(program) == [("delegate", backend)]


def test_several_sizes_through_one_loaded_program_equal_eager(exported):
    _, model, _, loaded, shape, sizes = exported
    for size in sizes:
        x = _input(shape, size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


def test_the_model_declares_its_dynamic_dims_and_reallocates_only_when_a_shape_changes(exported):
    _, model, _, loaded, shape, sizes = exported
    ((executable, _),) = loaded.runtime()._loaded.values()  # the one artifact, as its backend loaded it
    interpreter = executable.interpreter
    (detail,) = interpreter.get_input_details()
    assert -1 in list(detail["shape_signature"])
    calls = []
    allocate = interpreter.allocate_tensors
    interpreter.allocate_tensors = lambda: (calls.append(1), allocate())[1]
    try:
        a, b = _input(shape, sizes[1]), _input(shape, sizes[2])
        for x in (a, a, b, b, a):
            loaded(x)
    finally:
        interpreter.allocate_tensors = allocate
    assert len(calls) <= 3, "reallocated on a call whose shapes did not change"


def test_a_size_outside_the_declared_range_is_refused(exported):
    _, _, _, loaded, shape, sizes = exported
    batch, seq = sizes[0]
    too_big = _input(shape, (65 if batch is not None else None, 33 if seq is not None else None))
    with pytest.raises(InputError, match="65|33"):
        loaded(too_big)


def test_flattening_a_dynamic_batch_reads_no_run_time_size():
    model = Cnn().eval()
    program = capture(model, (torch.randn(2, 3, 8, 8),), [], {}, ({0: BATCH},))
    assert infer_view_sizes(program) == 1
    assert not [n for n in program.graph.nodes if n.target == torch.ops.aten.sym_size.int]
    x = torch.randn(7, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


def test_what_does_not_resize_is_declined_with_its_reason_and_still_runs(caplog):
    """A causal mask is a constant of the sequence length: written for one size only."""
    model = CausalAttention()
    with caplog.at_level(logging.WARNING, logger="edgeport.export"):
        program = edgeport.export(model, (torch.randn(1, 2, 8, 16),), ["cpu"], dynamic_shapes=({2: SEQ},),
                                  registry=registry_for(CpuBackend()))
    (row,) = [n for n in program.report()["nodes"] if n["op"] == "aten.scaled_dot_product_attention.default"]
    assert row["backend"] == "portable"
    assert "depends on the size of a dynamic dim" in row["reasons"]["cpu"]
    assert any("cpu declined" in r.getMessage() and "dynamic dims" in r.getMessage() for r in caplog.records)
    for t in (3, 11):
        q = torch.randn(1, 2, t, 16)
        torch.testing.assert_close(program(q), model(q))


def test_qualcomm_declines_dynamic_dims_with_its_reason_and_export_warns(caplog):
    from edgeport.backends.qualcomm import QualcommBackend

    backend = QualcommBackend()
    if not backend.availability().can_compile:
        pytest.skip(backend.availability().why)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with caplog.at_level(logging.WARNING, logger="edgeport.export"):
        program = edgeport.export(model, (torch.randn(2, 8),), ["qualcomm"], dynamic_shapes=({0: BATCH},),
                                  registry=registry_for(backend))
    reasons = {n["reasons"]["qualcomm"] for n in program.report()["nodes"] if n["backend"] == "portable"}
    assert reasons and all("HTP has no dynamic shapes" in r for r in reasons)
    (line,) = [r.getMessage() for r in caplog.records if "qualcomm declined" in r.getMessage()]
    assert "dynamic dims" in line
    x = torch.randn(9, 8)
    torch.testing.assert_close(program(x), model(x))


# -- edgeport export --dynamic ----------------------------------------------------------

FACTORY = '''
import torch
from torch import nn

class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).flatten(1)

def factory():
    torch.manual_seed(0)
    return Cnn().eval(), (torch.randn(2, 3, 8, 8),)
'''


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    (tmp_path / "model.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(*args):
    from click.testing import CliRunner

    from edgeport.cli import cli

    return CliRunner().invoke(cli, list(args), obj=registry_for(CpuBackend()))


@pytest.mark.parametrize("item", ["x.0=1:16", "0.0=1:16"], ids=["by name", "by position"])
def test_cli_export_takes_dynamic_dims_for_a_factory(model_file, item):
    result = _cli("export", "model.py:factory", "--backend", "cpu", "--dynamic", item, "-o", "m.edgeport")
    assert result.exit_code == 0, result.output
    program = edgeport.load(model_file / "m.edgeport", registry=registry_for(CpuBackend()))
    plan = program.manifest.methods["forward"]
    assert list(plan.symbols.values()) == [(1, 16)]
    assert _steps(program) == [("delegate", "cpu")]
    import importlib.util

    spec = importlib.util.spec_from_file_location("dyn_model", model_file / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, _ = module.factory()
    for batch in (1, 3, 16):
        x = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x))


@pytest.mark.parametrize("item, words", [
    ("y.0=1:16", "has no input 'y'"),
    ("x.4=1:16", "has 4 dims"),
    ("x.0=16:1", "MIN < MAX"),
    ("x.0=4:4", "a dim of one size is static"),
    ("x.0=1:99999999999999999999", "MAX <= 2147483647"),  # refused after the export, by the manifest
    ("x.0", "bad --dynamic"),
])
def test_cli_refuses_a_bad_dynamic_dim_in_one_line(model_file, item, words):
    result = _cli("export", "model.py:factory", "--backend", "cpu", "--dynamic", item, "-o", "m.edgeport")
    assert result.exit_code == 1, result.output
    assert words in result.output and "Traceback" not in result.output


def test_coreml_declines_dynamic_dims_with_its_reason():
    from edgeport.backends.coreml import CoreMLBackend

    backend = CoreMLBackend()
    if not backend.availability().can_compile:
        pytest.skip(backend.availability().why)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU()).eval()
    program = edgeport.export(model, (torch.randn(2, 8),), ["coreml", "cpu"], dynamic_shapes=({0: BATCH},),
                              registry=registry_for(backend, CpuBackend()))
    rows = [n for n in program.report()["nodes"] if n["backend"] == "cpu"]
    assert rows and all("static shapes" in n["reasons"]["coreml"] for n in rows)
    x = torch.randn(5, 8)
    torch.testing.assert_close(program(x), model(x))


def test_a_dim_range_edited_to_hold_no_size_is_refused_at_load(exported, tmp_path):
    """Every call would be refused as out of range, blaming the input for the file's fault."""
    backend, _, _, loaded, _, _ = exported
    loaded.save(tmp_path / "m.edgeport")
    manifest, files = unpack((tmp_path / "m.edgeport").read_bytes())
    symbols = manifest["methods"]["forward"]["symbols"]
    (symbol, (low, high)), = symbols.items()
    symbols[symbol] = [high, low]
    (tmp_path / "edited.edgeport").write_bytes(pack(manifest, files))
    with pytest.raises(ProgramError, match=f"symbol '{symbol}' ranges from {high} to {low}, which no size is"):
        edgeport.load(tmp_path / "edited.edgeport",
                      registry=registry_for(CpuBackend() if backend == "cpu" else MediatekBackend()))


def test_a_dynamic_dim_whose_example_size_is_one_names_the_dim_and_the_fix():
    """A batch-1 example with a dynamic batch said only "torch.export could not capture
    the model: Constraints violated (b)!", and a hint to rerun with --debug: torch
    specializes sizes 0 and 1, so the example must be larger along that dim."""
    from torch.export import Dim

    model = nn.Conv2d(3, 4, 3).eval()
    with pytest.raises(edgeport.EdgeportError, match=r"Constraints violated \(b\)!.* You marked b as dynamic but your "
                                                     r"code specialized it to be a constant \(1\)\.$") as info:
        edgeport.export(model, (torch.randn(1, 3, 8, 8),), ["cpu"], dynamic_shapes=({0: Dim("b", min=1, max=8)},),
                        registry=registry_for(CpuBackend()))
    assert info.value.hint == ("the example inputs give b (size 1) a size torch.export makes a constant: give the "
                               "example inputs a size of 2 or more along each dynamic dim")
    program = edgeport.export(model, (torch.randn(2, 3, 8, 8),), ["cpu"], dynamic_shapes=({0: Dim("b", min=1, max=8)},),
                              registry=registry_for(CpuBackend()))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))
