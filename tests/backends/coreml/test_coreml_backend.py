"""The coreml backend as a plugin: registration, availability, options, load here."""

import subprocess
import sys

import pytest
import torch

import edgeport
import edgeport.backends.coreml as coreml_plugin
from coreml_helpers import ON_MACOS, export
from edgeport.backend import options_from_dict, validate_options
from edgeport.backends.coreml import CoreMLBackend, CoreMLOptions
from edgeport.testing import installed_backends, registered_by


def test_plugin_registers_the_coreml_backend():
    assert isinstance(registered_by(coreml_plugin)["coreml"], CoreMLBackend)


def test_edgeport_backends_lists_coreml():
    listed = installed_backends()["coreml"]
    assert listed["distribution"] == "edgeport"
    assert (listed["can_compile"], listed["can_run"]) == (True, ON_MACOS)


@pytest.mark.slow
def test_import_is_cheap_and_availability_is_quiet():
    """Importing the plugin leaves coremltools alone; asking availability imports it
    without a word on stdout or stderr (no torch-version warning, no proxy warnings)."""
    script = (
        "import sys, edgeport.backends.coreml as p\n"
        "assert 'coremltools' not in sys.modules\n"
        "print(p.CoreMLBackend().availability().can_compile)\n"
    )
    done = subprocess.run([sys.executable, "-W", "ignore::FutureWarning", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"
    assert done.stderr == ""


def test_version_names_coremltools(backend):
    assert backend.version.startswith("coremltools ")


@pytest.mark.skipif(ON_MACOS, reason="checks the message off macOS")
def test_availability_here_compiles_but_cannot_run(backend):
    pytest.importorskip("coremltools")
    availability = backend.availability()
    assert (availability.can_compile, availability.can_run) == (True, False)
    assert availability.why == "Core ML runs only on macOS (this is Linux)"


@pytest.mark.skipif(ON_MACOS, reason="checks the error off macOS")
def test_load_here_raises_the_clear_error(backend):
    with pytest.raises(edgeport.BackendError, match=r"^Core ML runs only on macOS \(this is Linux\)$") as raised:
        backend.load(edgeport.Artifact(b"", ".mlpackage.zip"))
    assert "--reference" in raised.value.hint


def test_options_default_to_ios17_all_units_fp16():
    assert CoreMLOptions() == CoreMLOptions("iOS17", "ALL", "fp16")


@pytest.mark.parametrize(
    "field, value, choices",
    [("compute_units", "NPU", "ALL, CPU_AND_NE, CPU_AND_GPU, CPU_ONLY"), ("compute_precision", "int8", "fp16, fp32")],
)
def test_options_refuse_unknown_choices(backend, field, value, choices):
    with pytest.raises(edgeport.BackendError, match=f"option coreml.{field}={value!r} is not one of: {choices}"):
        validate_options(backend, options_from_dict(backend, {field: value}))


@pytest.mark.parametrize("target", ["iOS14", "ios17", "Android14"])
def test_compile_refuses_a_target_that_cannot_hold_an_ml_program(backend, target):
    pytest.importorskip("coremltools")
    program = export(torch.nn.ReLU(), (torch.randn(2, 3),))
    with pytest.raises(edgeport.BackendError, match="cannot hold an ML program") as raised:
        backend.compile(program, CoreMLOptions(minimum_deployment_target=target))
    assert "iOS15" in raised.value.hint and "macOS14" in raised.value.hint


@pytest.mark.parametrize("on_macos", [True, False], ids=["macOS", "elsewhere"])
def test_without_coremltools_the_backend_says_how_to_install_it(monkeypatch, on_macos):
    """Off macOS it says first that no install makes it run there: a device without
    coremltools (or torch) was told only to install them."""
    from edgeport.backends.coreml import runtime, toolchain

    def missing():
        raise ImportError("No module named 'coremltools'")

    monkeypatch.setattr(toolchain, "_import", missing)
    monkeypatch.setattr(runtime, "runs_here", lambda: on_macos)
    monkeypatch.setattr(runtime.platform, "system", lambda: "Linux")
    backend = CoreMLBackend()  # a fresh one: no registry built yet
    availability = backend.availability()
    assert (availability.can_compile, availability.can_run) == (False, False)
    install = ("coremltools cannot be imported (No module named 'coremltools'); "
               "install it with: pip install 'edgeport[coreml]' (coremltools 9.0)")
    assert availability.why == (install if on_macos else f"Core ML runs only on macOS (this is Linux); compile: {install}")
    node = torch.fx.Graph().placeholder("x")
    answer = backend.support(node, None)
    assert not answer and "pip install 'edgeport[coreml]'" in answer.reason
