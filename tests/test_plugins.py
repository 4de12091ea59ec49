"""Plugin discovery: registration, isolation of broken plugins, duplicates, disabling."""

import types

import pytest

import edgeport
from torch_backend import TorchOpsBackend


def plugin(*backends, fail: Exception | None = None):
    class Plugin:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            if fail:
                raise fail
            for backend in backends:
                register(backend)

    return Plugin()


def test_a_plugin_that_raises_is_recorded_and_the_others_still_work():
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(fail=RuntimeError("vendor SDK missing")), name="broken", distribution="acme-npu")
    registry.add_plugin(plugin(TorchOpsBackend()), name="good")
    assert list(registry.entries()) == ["torchops"]
    [broken] = registry.broken()
    assert (broken.plugin, broken.distribution) == ("broken", "acme-npu")
    assert broken.error == "RuntimeError: vendor SDK missing"


def test_an_entry_point_that_fails_to_import_is_recorded(monkeypatch):
    class BrokenEntryPoint:
        name = "acme"
        dist = types.SimpleNamespace(name="acme-edgeport", version="1.0")

        def load(self):
            raise ImportError("No module named 'acme_sdk'")

    monkeypatch.setattr(edgeport.plugins.metadata, "entry_points", lambda group: [BrokenEntryPoint()])
    registry = edgeport.Registry()
    assert registry.entries() == {}
    assert [(b.plugin, b.distribution, b.error) for b in registry.broken()] == [
        ("acme", "acme-edgeport", "ImportError: No module named 'acme_sdk'")
    ]
    with pytest.raises(edgeport.UnknownBackendError) as info:
        registry.get("acme")
    assert "failed to load" in info.value.hint


def test_two_backends_with_one_name_name_both_distributions():
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(TorchOpsBackend()), name="first", distribution="dist-one")
    registry.add_plugin(plugin(TorchOpsBackend()), name="second", distribution="dist-two")
    with pytest.raises(edgeport.PluginError, match="registered twice: by dist-one .* and by dist-two"):
        registry.entries()


def test_aliases_select_the_backend():
    registry = edgeport.Registry(entry_points=False)

    class Plugin:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            register(TorchOpsBackend(), aliases=("npu",))

    registry.add_plugin(Plugin(), name="p")
    assert registry.get("npu").name == "torchops"


def test_registering_something_that_is_not_a_backend_fails_at_registration():
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(object()), name="sloppy")
    with pytest.raises(edgeport.PluginError, match="not an edgeport.Backend"):
        registry.entries()


def test_disabled_plugins_are_not_loaded(monkeypatch):
    monkeypatch.setenv("EDGEPORT_DISABLE_PLUGINS", "good, other")
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(TorchOpsBackend()), name="good")
    assert registry.entries() == {}


def test_importing_edgeport_imports_no_toolchain():
    import subprocess
    import sys

    code = (
        "import sys, edgeport, edgeport.cli; edgeport.default_registry().entries(); "
        "heavy = [m for m in ('coremltools', 'onnxruntime', 'ai_edge_litert', 'onnx', 'tflite_runtime') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
