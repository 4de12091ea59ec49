"""The CLI as a user runs it: export, run, explain, backends, and its errors."""

import json

import pytest
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from torch_backend import TorchOpsBackend, registry_with

MODEL = '''
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x)) * 2

def factory():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(1, 3, 8, 8),)

def not_a_factory():
    return 3
'''


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A model file in the working directory."""
    (tmp_path / "model.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args, registry=None):
    """Run the CLI as a user would, with a registry holding only the test backend."""
    return CliRunner().invoke(cli, list(args), obj=registry or registry_with(TorchOpsBackend()), catch_exceptions=False)


def fails(*args, registry=None):
    """Run the CLI expecting a user's error: exit status 1, one message, no traceback."""
    result = CliRunner().invoke(cli, list(args), obj=registry or registry_with(TorchOpsBackend()))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result.output


def test_export_run_explain(env):
    result = invoke("export", "model.py:factory", "--backend", "torchops", "-o", "m.edgeport",
                    "--option", "torchops.scale=1.0", "--report", "report.json")
    assert result.exit_code == 0, result.output
    assert "torchops" in result.output and (env / "m.edgeport").exists()
    assert json.loads((env / "report.json").read_text())["forward"]["nodes"]

    result = invoke("run", "m.edgeport", "--repeat", "3", "--warmup", "1", "--profile", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) >= {"outputs", "latency_ms", "steps"}
    assert set(data["latency_ms"]) == {"min", "median", "max"}
    assert [s["label"] for s in data["steps"]] == ["portable", "torchops"]
    assert data["outputs"][0]["shape"] == [1, 4, 6, 6]

    data = json.loads(invoke("explain", "m.edgeport", "--json").output)
    assert {n["name"]: n["backend"] for n in data["nodes"]} == {"convolution": "portable", "relu": "torchops", "mul": "torchops"}
    assert {tuple(sorted(p)) for p in data["partitions"]} >= {
        ("backend", "boundary_bytes", "fallback", "id", "inputs", "node_names", "nodes", "outputs")
    }
    table = invoke("explain", "m.edgeport").output
    assert "torchops has no kernel for aten.convolution.default" in table


def test_run_with_inputs_file(env):
    import numpy as np

    invoke("export", "model.py:factory", "--backend", "torchops", "-o", "m.edgeport")
    x = np.ones((1, 3, 8, 8), dtype=np.float32)
    np.savez(env / "in.npz", x=x)
    data = json.loads(invoke("run", "m.edgeport", "--inputs", "in.npz", "--json").output)
    import torch

    from edgeport.cli.spec import load_factory

    model, _ = load_factory("model.py:factory")
    expected = model(torch.from_numpy(x)).flatten()[:8].tolist()
    assert data["outputs"][0]["first"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "model.py:nope", "-o", "x.edgeport", "--backend", "torchops"], "has no factory 'nope'"),
        (["export", "model.py:not_a_factory", "-o", "x.edgeport", "--backend", "torchops"], "must return (module, example_inputs)"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "gpu9000"], "unknown backend 'gpu9000'; installed: torchops"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops", "--option", "scale=2"], "bad option 'scale=2'"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops", "--option", "torchops.scale=big"], "expects float"),
        (["run", "model.py"], "not a valid .edgeport file"),
    ],
)
def test_errors_are_one_line_with_a_hint_and_no_traceback(env, args, message):
    assert message in fails(*args)


def test_debug_shows_the_traceback(env):
    result = CliRunner().invoke(cli, ["--debug", "run", "model.py"])
    assert isinstance(result.exception, edgeport.ProgramError)


def test_backends_lists_backends_and_broken_plugins(env):
    registry = registry_with(TorchOpsBackend())

    class Broken:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            raise ImportError("libQnnHtp.so not found")

    registry.add_plugin(Broken(), name="broken-npu", distribution="broken-dist")
    data = json.loads(invoke("backends", "--json", registry=registry).output)
    assert [b["name"] for b in data["backends"]] == ["torchops"]
    [broken] = data["broken"]
    assert (broken["plugin"], broken["distribution"], broken["error"]) == (
        "broken-npu", "broken-dist", "ImportError: libQnnHtp.so not found")
    assert "EDGEPORT_DISABLE_PLUGINS=broken-npu" in broken["hint"]
    assert "broken plugin broken-npu" in invoke("backends", registry=registry).output


def test_backends_lists_a_backend_whose_availability_raises(env):
    class Flaky(TorchOpsBackend):
        def availability(self):
            raise OSError("libvendor.so: cannot open shared object file")

    registry = registry_with(Flaky(name="flaky"), TorchOpsBackend())
    rows = {b["name"]: b for b in json.loads(invoke("backends", "--json", registry=registry).output)["backends"]}
    assert rows["flaky"]["why"] == "availability() raised OSError: libvendor.so: cannot open shared object file"
    assert (rows["flaky"]["can_compile"], rows["torchops"]["can_run"]) == (False, True)
    assert "availability() raised OSError" in invoke("backends", registry=registry).output


def test_a_registry_given_to_the_cli_is_the_one_it_uses(env):
    registry = registry_with(TorchOpsBackend(name="injected"))
    data = json.loads(invoke("backends", "--json", registry=registry).output)
    assert [b["name"] for b in data["backends"]] == ["injected"]
    assert invoke("export", "model.py:factory", "-b", "injected", "-o", "m.edgeport", registry=registry).exit_code == 0
    assert "injected" in invoke("run", "m.edgeport", registry=registry).output
