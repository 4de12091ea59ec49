"""The CLI as a user runs it: export, run, explain, backends, and its errors."""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from edgeport.native_output import TOOLCHAIN_LOG_ENV
from torch_backend import TorchOpsBackend, registry_with

MODEL = '''
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.relu(self.conv(x)) * 2

MODEL_SIZE = 8


def factory():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(1, 3, MODEL_SIZE, MODEL_SIZE),)

def not_a_factory():
    return 3


def watched():
    open("factory-called", "w").close()
    return factory()


def broken_factory():
    raise ValueError("no weights here")


def exiting_factory():
    raise SystemExit(3)


class Complex(torch.nn.Module):
    def forward(self, x):
        return torch.view_as_complex(x)


def complex_outputs():
    return Complex(), (torch.randn(3, 2),)


class Scale(torch.nn.Module):
    def forward(self, x, n):
        return x * n


def int_input():
    return Scale(), (torch.randn(3), 4)


class TwoOutputs(torch.nn.Module):
    def forward(self, x):
        return torch.log(x - 10), torch.relu(x)  # log of a negative: nan


def nan_and_relu():
    return TwoOutputs(), (torch.rand(1, 4),)


class Branches(torch.nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # data-dependent: torch.export cannot capture it


def branches():
    return Branches(), (torch.randn(3),)


def list_inputs():
    return Net().eval(), [torch.randn(1, 3, 8, 8)]


def meta_weights():
    return Net().to("meta").eval(), (torch.randn(1, 3, 8, 8),)


class Loud(torch.nn.Module):
    def forward(self, x):
        import sys
        print("Loud.forward traced", file=sys.stderr)
        return x + 1


def loud():
    return Loud(), (torch.randn(3),)
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
    assert "torch-free: no (1 portable step(s)" in result.output  # why an op fell back, said at export
    assert "aten.convolution.default (torchops: torchops has no kernel for" in " ".join(result.output.split())
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
        ("backend", "boundary_bytes", "compile_s", "fallback", "id", "inputs", "node_names", "nodes", "outputs")
    }
    assert all((p["compile_s"] is None) == (p["backend"] == "portable") for p in data["partitions"])
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
        (["export", "model.py:MODEL_SIZE", "-o", "x.edgeport", "--backend", "torchops"],
         "has no factory 'MODEL_SIZE' (MODEL_SIZE = 8, not a function)"),
        (["export", "model.py:not_a_factory", "-o", "x.edgeport", "--backend", "torchops"], "must return (module, example_inputs)"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "gpu9000"], "unknown backend 'gpu9000'; installed: torchops"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops", "--option", "scale=2"], "bad option 'scale=2'"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops", "--option", "torchops.scale=big"], "expects float"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops", "--option", "torchops.scale=nan"],
         "expects float that is a finite number, got nan"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops", "--option", "torchops.scale=2",
          "--option", "torchops.scale=3"], "option torchops.scale is given twice, as '2' and '3'"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops,torchops"],
         "backend 'torchops' is named twice"),
        (["export", "model.py:factory", "-o", "x.edgeport", "--backend", "torchops,,torchops"],
         "an empty backend name in 'torchops,,torchops'"),
        (["run", "model.py"], "not a valid .edgeport file"),
    ],
)
def test_errors_are_one_line_with_a_hint_and_no_traceback(env, args, message):
    assert message in fails(*args)


def test_debug_shows_the_traceback(env, monkeypatch):
    monkeypatch.setenv(TOOLCHAIN_LOG_ENV, "")  # --debug sets it to 1: unset after the test, for later ones
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
    assert [(b["name"], b["plugin"]) for b in data["backends"]] == [("torchops", "test-plugin")]
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
    assert (rows["flaky"]["runs_on"], rows["torchops"]["runs_on"]) == (None, "device")  # as the table's "-"
    assert "availability() raised OSError" in invoke("backends", registry=registry).output


def test_a_registry_given_to_the_cli_is_the_one_it_uses(env):
    registry = registry_with(TorchOpsBackend(name="injected"))
    data = json.loads(invoke("backends", "--json", registry=registry).output)
    assert [b["name"] for b in data["backends"]] == ["injected"]
    assert invoke("export", "model.py:factory", "-b", "injected", "-o", "m.edgeport", registry=registry).exit_code == 0
    assert "injected" in invoke("run", "m.edgeport", registry=registry).output


# -- issue 15 item 8: a user's mistake gets a user's error ---------------------------------


@pytest.mark.parametrize("spec, message", [
    ("model.py:broken_factory", "factory model.py:broken_factory raised ValueError: no weights here"),
    ("model.py:exiting_factory", "factory model.py:exiting_factory raised SystemExit: 3"),  # exit 3, no word said
    ("os.path:join", "os.path:join is not a factory: it takes arguments (a, *p)"),
    ("model.py:complex_outputs", "output 0 of the model is complex64"),
    ("model.py:int_input", "input 1 of the model is a Python int (4)"),
    ("model.py:list_inputs", "factory model.py:list_inputs returns its example inputs as a list; they are a tuple"),
    ("model.py:meta_weights", "weight conv.weight of the model is on the meta device: it has no values to export"),
])
def test_a_model_mistake_is_a_users_error(env, spec, message):
    assert message in fails("export", spec, "-b", "torchops", "-o", "m.edgeport")


def test_a_syntax_error_in_the_model_file_is_a_users_error(env):
    (env / "bad.py").write_text("import torch\ndef factory(:\n")
    assert "cannot load bad.py: SyntaxError: invalid syntax (bad.py, line 2)" in fails(
        "export", "bad.py:factory", "-b", "torchops", "-o", "m.edgeport")


@pytest.mark.parametrize("args, message", [
    (["-o", "missing/m.edgeport"], "cannot write missing/m.edgeport: folder missing does not exist"),
    (["-o", "m.edgeport", "--report", "missing/r.json"], "cannot write missing/r.json: folder missing does not exist"),
    (["-o", "model.py/m.edgeport"], "cannot write model.py/m.edgeport: model.py is a file, not a folder"),
    (["-o", ""], "an output file name is empty"),
    (["-o", "m.edgeport", "--report", "./m.edgeport"], "two outputs are both ./m.edgeport"),
    (["-o", "model.py"], "cannot write model.py: it would overwrite a Python source file"),
])
def test_export_checks_where_it_writes_before_any_work(env, args, message):
    assert message in fails("export", "model.py:watched", "-b", "torchops", *args)
    assert not (env / "factory-called").exists() and not (env / "m.edgeport").exists()


@pytest.fixture
def program(env):
    assert invoke("export", "model.py:nan_and_relu", "-b", "torchops", "-o", "m.edgeport").exit_code == 0
    return env / "m.edgeport"


def test_explain_mistakes_are_users_errors(program):
    assert "cannot write missing/x.html: folder missing does not exist" in fails(
        "explain", "m.edgeport", "--html", "missing/x.html")
    assert "program has no method 'nosuch'; it has forward" in fails("explain", "m.edgeport", "--method", "nosuch")
    output = fails("explain", "m.edgeport", "--html", "model.py")  # the hint said "-o model.edgeport" of a page
    assert "it would overwrite a Python source file" in output and "-o model.edgeport" not in output


class Simulated(TorchOpsBackend):
    def availability(self):
        return edgeport.Availability(True, True, why="runs in a simulator", runs_on="simulator")


def test_explain_says_how_each_backend_runs_here(program):
    """The README says explain tells when a step does not run on its target hardware; it never did."""
    assert "torchops: runs here on its device" in invoke("explain", "m.edgeport").output
    simulated = registry_with(Simulated())
    assert "torchops: runs here as its simulator, not on its target hardware" in invoke(
        "explain", "m.edgeport", registry=simulated).output
    data = json.loads(invoke("explain", "m.edgeport", "--json", registry=simulated).output)
    assert data["runs_here"] == {"torchops": {"can_run": True, "runs_on": "simulator", "why": "runs in a simulator",
                                              "compiled_by": "0", "installed": "0"}}
    output = invoke("explain", "m.edgeport", registry=registry_with(TorchOpsBackend(can_run=False))).output
    assert "torchops: cannot run here (the test says it cannot run here)" in output
    data = json.loads(invoke("explain", "m.edgeport", "--json", registry=registry_with()).output)
    assert data["runs_here"]["torchops"]["can_run"] is False
    assert "unknown backend 'torchops'" in data["runs_here"]["torchops"]["why"]
    assert (data["runs_here"]["torchops"]["compiled_by"], data["runs_here"]["torchops"]["installed"]) == ("0", None)


class Upgraded(TorchOpsBackend):
    version = "2.0"


def test_explain_says_when_the_installed_backend_is_not_the_version_that_compiled_it(program):
    """Every artifact records the version that compiled it, and nothing showed it: a
    toolchain upgrade that reads an old artifact differently was found only by its answers."""
    output = invoke("explain", "m.edgeport", registry=registry_with(Upgraded())).output
    assert "torchops: runs here on its device; compiled by torchops 0, this is 2.0: re-export if its" in output
    assert "compiled by" not in invoke("explain", "m.edgeport").output


def test_a_model_torch_export_cannot_capture_is_one_line_without_torch_s_logs(env, monkeypatch):
    """torch logged the failure and printed the graph first: about 20 lines."""
    monkeypatch.delenv("EDGEPORT_TOOLCHAIN_LOG", raising=False)  # an earlier --debug in this process sets it
    output = fails("export", "model.py:branches", "-b", "torchops", "-o", "m.edgeport")
    assert output.splitlines() == [
        "Error: torch.export could not capture the model: Could not guard on data-dependent expression "
        "Eq(u0, 1) (unhinted: Eq(u0, 1)).  (Size-like symbols: none)",
        "  hint: the model branches on, or sizes a tensor by, a tensor's values (`if x.sum() > 0`, `int(n)`), "
        "which torch.export cannot capture: use torch.where or torch.cond, or move that logic out of forward; "
        "--debug shows the line"]


@pytest.mark.parametrize("spec, hint", [
    ("model:factory", "to load the file model.py, name it: model.py:NAME"),
    ("notes.txt:factory", "notes.txt is a file but not a .py file"),
    ("no_such_package.models:factory", "use path/to/file.py:NAME, or package.module:NAME of an installed package"),
])
def test_a_spec_that_imports_nothing_says_what_to_write(env, spec, hint):
    (env / "notes.txt").write_text("not python")
    output = fails("export", spec, "-b", "torchops", "-o", "m.edgeport")
    assert f"cannot import {spec.split(':')[0]}" in output and hint in output


def test_what_a_model_prints_while_it_is_captured_still_shows(env):
    result = invoke("export", "model.py:loud", "-b", "torchops", "-o", "m.edgeport")
    assert result.exit_code == 0 and "Loud.forward traced" in result.output


def test_inputs_named_unlike_the_method_s_are_refused_not_taken_in_order(program):
    """An array named after another input used to go to the first input."""
    import numpy as np

    np.savez(program.parent / "named.npz", y=np.ones((1, 4), dtype=np.float32))
    assert "named.npz holds arrays y; the method's inputs are x" in fails("run", "m.edgeport", "--inputs", "named.npz")
    np.savez(program.parent / "extra.npz", x=np.ones((1, 4), dtype=np.float32), z=np.ones(1, dtype=np.float32))
    assert "extra.npz holds arrays x, z; the method's inputs are x" in fails("run", "m.edgeport", "--inputs", "extra.npz")
    np.savez(program.parent / "unnamed.npz", np.ones((1, 4), dtype=np.float32))  # arr_0: in order
    assert invoke("run", "m.edgeport", "--inputs", "unnamed.npz").exit_code == 0
    np.savez(program.parent / "scalar.npz", x=np.float32(3.0))  # said "got [1]"
    assert "input 0 ('x') must have shape [1, 4], got []" in fails("run", "m.edgeport", "--inputs", "scalar.npz")


def test_inputs_that_are_not_an_npz_archive_are_a_users_error(program):
    import numpy as np

    np.save(program.parent / "x.npy", np.ones((1, 4), dtype=np.float32))
    (program.parent / "garbage.npz").write_text("not numpy at all")
    for path in ("x.npy", "garbage.npz"):
        output = fails("run", "m.edgeport", "--inputs", path)
        assert f"{path} is not an .npz archive" in output and "numpy.savez" in output
        assert "pickled" not in output


def test_inputs_saved_with_torch_save_are_named_as_such(program):
    """torch.save writes a zip as numpy.savez does: its entries were listed as arrays
    ("x.pt holds arrays x/.data/serialization_id, x/.format_version, ...")."""
    torch.save({"x": torch.ones(1, 4)}, program.parent / "x.pt")
    output = fails("run", "m.edgeport", "--inputs", "x.pt")
    assert "x.pt is a torch.save file, not a numpy .npz archive" in output
    assert "numpy.savez('x.npz', x=x.numpy())" in output


# -- issue 15 item 9: options are validated at export, before any work -----------------------


@pytest.fixture
def real_backends():
    from edgeport.backends.coreml import CoreMLBackend
    from edgeport.backends.cpu import CpuBackend
    from edgeport.backends.mediatek.backend import MediatekBackend
    from edgeport.backends.qualcomm import QualcommBackend

    return registry_with(CpuBackend(), QualcommBackend(), MediatekBackend(), CoreMLBackend())


@pytest.mark.parametrize("backend, option, message, default", [
    ("cpu", "cpu.precision=fp8", "option cpu.precision='fp8' is not one of: fp32, fp16", "'fp32'"),
    ("cpu", "cpu.threads=-3", "option cpu.threads=-3 is out of range: it must be at least 0", "0"),
    ("qualcomm", "qualcomm.soc=SM9999", "option qualcomm.soc='SM9999' is not one of: SM8350", "'SM8650'"),
    ("mediatek", "mediatek.soc=MT0000", "option mediatek.soc='MT0000' is not one of: MT6853", "'MT6989'"),
    ("coreml", "coreml.minimum_deployment_target=iOS99",
     "option coreml.minimum_deployment_target='iOS99' is not one of: iOS15, iOS16, iOS17", "'iOS17'"),
])
def test_a_bad_option_is_refused_before_any_work(env, real_backends, backend, option, message, default):
    output = fails("export", "model.py:watched", "-b", backend, "--option", option, "-o", "m.edgeport",
                   registry=real_backends)
    assert message in output and f"its default is {default}" in output
    assert not (env / "factory-called").exists() and not (env / "m.edgeport").exists()


def test_options_are_spelled_as_declared(env, real_backends):
    from edgeport.api import resolve_backends

    _, options = resolve_backends(["cpu"], {"cpu": {"precision": "FP16"}}, real_backends)
    assert options["cpu"].precision == "fp16"


def test_an_empty_backend_list_is_an_error(env):
    assert "no backend selected" in fails("export", "model.py:watched", "-b", "", "-o", "m.edgeport")
    assert not (env / "factory-called").exists()
    with pytest.raises(edgeport.BackendError, match="no backend selected"):
        edgeport.export(torch.nn.ReLU(), (torch.randn(2),), [], registry=registry_with(TorchOpsBackend()))


# -- issue 15 item 10: run shows every output --------------------------------------------------


def test_run_text_shows_nan_outputs(program):
    output = invoke("run", "m.edgeport").output
    assert "output 0: float32 [1, 4], first nan, nan, nan, nan, mean nan" in output


def test_run_json_is_strict_json_with_nan_outputs(program):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    data = json.loads(invoke("run", "m.edgeport", "--json").output, parse_constant=refuse)
    assert data["outputs"][0]["first"] == ["NaN"] * 4 and data["outputs"][0]["mean"] == "NaN"


def test_no_command_writes_over_a_file_it_reads(program):
    """`run P --outputs P` and `explain P --html P` wrote over the program, `--outputs
    in.npz` over the inputs: the file was lost."""
    import numpy as np

    np.savez(program.parent / "in.npz", x=np.full((1, 4), 0.5, dtype=np.float32))
    (program.parent / "link.edgeport").symlink_to(program)
    before = program.read_bytes()
    for args, read in [(["run", "m.edgeport", "--outputs", "m.edgeport"], "m.edgeport"),
                       (["run", "m.edgeport", "--outputs", "link.edgeport"], "m.edgeport"),
                       (["run", "m.edgeport", "--inputs", "in.npz", "--outputs", "in.npz"], "in.npz"),
                       (["explain", "m.edgeport", "--html", "m.edgeport"], "m.edgeport")]:
        assert f"it is {read}, which this command reads" in fails(*args), args
    assert program.read_bytes() == before
    with np.load(program.parent / "in.npz") as kept:
        assert kept.files == ["x"]


def test_run_writes_every_output_to_an_npz(program):
    import numpy as np

    np.savez(program.parent / "in.npz", x=np.full((1, 4), 0.5, dtype=np.float32))
    data = json.loads(invoke("run", "m.edgeport", "--inputs", "in.npz", "--outputs", "out.npz", "--json").output)
    assert data["outputs_file"] == "out.npz"
    with np.load(program.parent / "out.npz") as saved:
        assert saved.files == ["output_0", "output_1"]
        assert np.isnan(saved["output_0"]).all() and saved["output_0"].shape == (1, 4)
        np.testing.assert_array_equal(saved["output_1"], np.full((1, 4), 0.5, dtype=np.float32))
    assert "cannot write missing/out.npz: folder missing does not exist" in fails(
        "run", "m.edgeport", "--outputs", "missing/out.npz")
    assert "to out.txt" in invoke("run", "m.edgeport", "--outputs", "out.txt").output
    with np.load(program.parent / "out.txt") as saved:  # the name given, not out.txt.npz
        assert saved.files == ["output_0", "output_1"]


def test_two_plugins_registering_one_name_leave_every_command_working(env, monkeypatch, capsys):
    """`edgeport --help` and `edgeport backends`, through `main()` as the console script runs them."""
    import edgeport.cli

    class Copycat:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            register(TorchOpsBackend())

    registry = registry_with(TorchOpsBackend())
    registry.add_plugin(Copycat(), name="copycat", distribution="copycat-dist")
    monkeypatch.setattr(edgeport.cli, "default_registry", lambda: registry)

    def main(*args):
        monkeypatch.setattr("sys.argv", ["edgeport", *args])
        with pytest.raises(SystemExit) as exited:
            edgeport.cli.main()
        assert exited.value.code == 0
        return capsys.readouterr().out

    assert "Commands:" in main("--help")
    data = json.loads(main("backends", "--json"))
    assert [b["name"] for b in data["backends"]] == ["torchops"]
    assert [b["plugin"] for b in data["broken"]] == ["copycat"]
    assert "registered twice: by (registered in code) (plugin test-plugin) and by copycat-dist" in data["broken"][0]["error"]


def test_a_model_file_imports_the_modules_beside_it(tmp_path, monkeypatch):
    """`python model.py` finds `layers.py` beside it; edgeport said "No module named 'layers'"
    unless PYTHONPATH named the folder. The folder is on sys.path only while it loads."""
    from edgeport.cli.spec import load_factory

    (tmp_path / "layers.py").write_text("import torch\n\n\ndef block():\n    return torch.nn.ReLU()\n")
    (tmp_path / "model.py").write_text("import torch\nfrom layers import block\n\n\ndef factory():\n"
                                       "    import layers  # a lazy import too\n"
                                       "    return layers.block(), (torch.ones(2),)\n")
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.delitem(sys.modules, "layers", raising=False)
    before = list(sys.path)
    model, inputs = load_factory(f"{tmp_path.name}/model.py:factory")
    assert isinstance(model, torch.nn.ReLU) and inputs[0].shape == (2,)
    assert sys.path == before
    sys.modules.pop("layers", None)


def _backends_writing_to(stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeport.cli", "backends"], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120)


def test_output_to_a_pipe_whose_reader_left_ends_quietly():
    """`edgeport llm generate ... | head` was "internal error: BrokenPipeError ... please report it"."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = _backends_writing_to(write)
    finally:
        os.close(write)
    assert done.returncode == 1 and done.stderr == ""


def test_output_to_a_full_disk_is_one_line():
    """It was "internal error: OSError: [Errno 28] No space left on device ... please report it"."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with open("/dev/full", "w") as full:
        done = _backends_writing_to(full)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["Error: cannot write the output: No space left on device",
                                        "  hint: free some space, or write the output somewhere else"]


@pytest.fixture(scope="module")
def cpu_program(tmp_path_factory):
    path = tmp_path_factory.mktemp("closed") / "linear.edgeport"
    edgeport.export(torch.nn.Linear(4, 2), (torch.randn(1, 4),), ["cpu"]).save(path)
    return str(path)


def _cli_unable_to_write(args: list[str], **stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeport.cli", *args], stderr=subprocess.PIPE, text=True,
                          timeout=120, **stdout)


def _one_line_saying(why: str) -> list[str]:
    return [f"Error: cannot write the output: {why} (send it to /dev/null to discard it)"]


@pytest.mark.parametrize("args", [["backends"], ["backends", "--json"], ["--help"], ["--version"], ["cache"],
                                  ["explain", "PROGRAM"], ["run", "PROGRAM"], ["export", "--help"]])
def test_output_to_a_closed_stdout_fails_with_one_line(args, cpu_program):
    """`edgeport backends >&-` printed nothing and exited 0: Python leaves sys.stdout None,
    and click and rich drop what is written to it. `ls >&-` fails with one line."""
    args = [cpu_program if arg == "PROGRAM" else arg for arg in args]
    done = _cli_unable_to_write(args, preexec_fn=lambda: os.close(1))  # the child starts with descriptor 1 closed
    assert done.returncode == 1
    assert done.stderr.splitlines() == _one_line_saying("standard output is closed")


@pytest.mark.parametrize("args", [["backends"], ["--help"]])
def test_output_to_a_stdout_open_for_reading_fails_with_one_line(args):
    """With stdout open for reading only (1</dev/null) it was "internal error: OSError:
    [Errno 9] Bad file descriptor ... please report it", and --help a traceback."""
    with open(os.devnull) as read_only:
        done = _cli_unable_to_write(args, stdout=read_only)
    assert done.returncode == 1
    assert done.stderr.splitlines() == _one_line_saying("standard output is not open for writing")


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path):
    """Ctrl-C printed click's "Aborted!" and exited 1, as a failure does; shells report an
    interrupted command as 128 + SIGINT."""
    import edgeport.cli.explain as explain

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(explain, "read_program_file", interrupted)
    (tmp_path / "p.edgeport").write_bytes(b"")
    result = CliRunner().invoke(cli, ["explain", str(tmp_path / "p.edgeport")])
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted"


def test_random_inputs_of_a_huge_declared_shape_are_refused_before_any_is_made(program):
    """A manifest edited (and resealed) to declare an 18 GiB input filled that much memory,
    or failed with numpy's "array is too big", an internal error."""
    from program_zip import pack, unpack

    manifest, files = unpack(program.read_bytes())
    plan = manifest["methods"]["forward"]
    for shape in ([40000, 40000], [2**31 - 1, 2**31 - 1]):
        plan["inputs"][0]["shape"] = shape
        manifest["report"]["forward"]["values"][plan["input_values"][0]]["shape"] = shape
        program.write_bytes(pack(manifest, files))
        output = fails("run", "m.edgeport")
        assert "random inputs for method 'forward' would take" in output and "--inputs FILE.npz" in output
