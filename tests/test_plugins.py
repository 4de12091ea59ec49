"""Plugin discovery: registration, isolation of broken plugins, duplicates, disabling."""

import concurrent.futures
import threading
import time
import types
from dataclasses import dataclass

import click
import numpy as np
import pytest

import edgeport
from edgeport.api import resolve_backends
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


def failing_entry_point(monkeypatch, error: BaseException) -> None:
    """Installed entry points become one, "acme" of acme-edgeport, whose import raises ``error``."""
    class FailingEntryPoint:
        name = "acme"
        dist = types.SimpleNamespace(name="acme-edgeport", version="1.0")

        def load(self):
            raise error

    monkeypatch.setattr(edgeport.plugins.metadata, "entry_points", lambda group: [FailingEntryPoint()])


def test_an_entry_point_that_fails_to_import_is_recorded(monkeypatch):
    failing_entry_point(monkeypatch, ImportError("No module named 'acme_sdk'"))
    registry = edgeport.Registry()
    assert registry.entries() == {}
    assert [(b.plugin, b.distribution, b.error) for b in registry.broken()] == [
        ("acme", "acme-edgeport", "ImportError: No module named 'acme_sdk'")
    ]
    with pytest.raises(edgeport.UnknownBackendError) as info:
        registry.get("acme")
    assert "failed to load" in info.value.hint


def test_an_entry_point_that_imports_torch_at_the_top_is_said_to_break_the_run_side(monkeypatch):
    """On a device without torch its hint was "fix or uninstall acme-edgeport": the user's
    only choice, but the fix is the author's, and nothing said which import."""
    failing_entry_point(monkeypatch, ModuleNotFoundError("No module named 'torch'", name="torch"))
    [broken] = edgeport.Registry().broken()
    assert broken.hint.startswith("acme-edgeport imports torch when its module loads, and there is no torch here: "
                                  "a bug of the plugin")
    assert "'The run side'" in broken.hint and broken.hint.endswith("EDGEPORT_DISABLE_PLUGINS=acme")
    failing_entry_point(monkeypatch, ModuleNotFoundError("No module named 'acme_sdk'", name="acme_sdk"))
    [broken] = edgeport.Registry().broken()
    assert broken.hint == "fix or uninstall acme-edgeport, or block it with EDGEPORT_DISABLE_PLUGINS=acme"


def test_a_second_backend_of_one_name_is_a_broken_plugin_and_the_first_keeps_working():
    registry = edgeport.Registry(entry_points=False)
    first = TorchOpsBackend()
    registry.add_plugin(plugin(first), name="first", distribution="dist-one")
    registry.add_plugin(plugin(TorchOpsBackend()), name="second", distribution="dist-two")
    registry.add_commands(click.Group())  # what `edgeport --help` does first
    for _ in range(2):  # the same on every call
        assert registry.get("torchops") is first
        [broken] = registry.broken()
        assert (broken.plugin, broken.distribution) == ("second", "dist-two")
        assert "registered twice: by dist-one (plugin first) and by dist-two (plugin second)" in broken.error
        assert broken.hint == ("to keep dist-one's, block the other with EDGEPORT_DISABLE_PLUGINS=second; "
                               "to keep dist-two's, EDGEPORT_DISABLE_PLUGINS=first; or uninstall one")


def test_a_duplicate_name_hint_names_entry_points_not_the_backend():
    """The hint said EDGEPORT_DISABLE_PLUGINS=<the backend's name>, which blocked whichever
    plugin's entry point had that name: here the real one, not the duplicate."""
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(TorchOpsBackend(name="vnpu")), name="dup", distribution="qa-broken")
    registry.add_plugin(plugin(TorchOpsBackend(name="vnpu")), name="vnpu", distribution="qa-vnpu")
    [broken] = registry.broken()
    assert "to keep qa-vnpu's, EDGEPORT_DISABLE_PLUGINS=dup" in broken.hint
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(TorchOpsBackend(name="npu"), TorchOpsBackend(name="npu")), name="twice")
    assert registry.broken()[0].hint == "give each backend of plugin twice a name of its own"


def test_aliases_select_the_backend():
    registry = edgeport.Registry(entry_points=False)

    class Plugin:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            register(TorchOpsBackend(), aliases=("npu",))

    registry.add_plugin(Plugin(), name="p")
    assert registry.get("npu").name == "torchops"
    for twice in (["torchops", "torchops"], "npu,torchops"):  # a typo, or one backend by name and by alias
        with pytest.raises(edgeport.BackendError, match="backend 'torchops' is named twice"):
            resolve_backends(twice, registry=registry)

    # options by the alias the backend was selected by: "options given for backend(s) not selected: npu"
    selected, options = resolve_backends(["npu"], {"npu": {"scale": "2"}}, registry=registry)
    assert list(selected) == ["torchops"] and options["torchops"].scale == 2.0
    with pytest.raises(edgeport.BackendError, match="options given for backend\\(s\\) not selected: cpu"):
        resolve_backends(["npu"], {"cpu": {"threads": "2"}}, registry=registry)


class NoCompile(edgeport.Backend):
    name = "half_done"

    def support(self, node, ctx):
        return edgeport.Support.yes()

    def load(self, artifact):
        return None


class PlainOptions(TorchOpsBackend):
    options = dict


@dataclass
class MutableOptions:
    scale: float = 1.0


@dataclass(frozen=True)
class DefaultNotAChoice:
    precision: str = edgeport.option("fp64", choices=("fp32", "fp16"))


@dataclass(frozen=True)
class DefaultOutOfRange:
    threads: int = edgeport.option(0, at_least=1)


def _with_options(options):
    backend = TorchOpsBackend()
    backend.options = options
    return backend


def _with_rules(rules):
    """Rules were read at the first export: a dict failed there with AttributeError."""
    backend = TorchOpsBackend()
    backend.rules = rules
    return backend


class SchemesText(TorchOpsBackend):
    schemes = "int8"  # was listed as the schemes 8, i, n and t


class SchemeMisspelled(TorchOpsBackend):
    schemes = frozenset({"int8", "int-4"})  # no one could ask for it; `edgeport backends` listed it


class DefaultNotOffered(TorchOpsBackend):
    schemes = frozenset({"int8"})
    default_scheme = "a16w8"


class FloatVersion(TorchOpsBackend):
    version = 1.2


class NoVersion(TorchOpsBackend):
    version = None


@pytest.mark.parametrize("backend, error, hint", [
    (object(), "registered <object", "subclass edgeport.Backend"),
    (NoCompile(), "backend 'half_done' does not implement compile()", "define compile"),
    (TorchOpsBackend(name="my-npu"), "invalid backend name 'my-npu'", "letters, digits and underscores"),
    (TorchOpsBackend(name="portable"), "invalid backend name 'portable'", "letters, digits and underscores"),
    (PlainOptions(), "options of backend 'torchops' must be a dataclass, not dict", "@dataclass(frozen=True)"),
    (_with_options(MutableOptions), "options of backend 'torchops' (MutableOptions) are not frozen",
     "@dataclass(frozen=True) class MutableOptions"),
    (_with_options(DefaultNotAChoice), "an option default of backend 'torchops' breaks its own edgeport.option rule: "
     "option torchops.precision='fp64' is not one of: fp32, fp16", "make each default of DefaultNotAChoice one"),
    (_with_options(DefaultOutOfRange), "rule: option torchops.threads=0 is out of range: it must be at least 1",
     "make each default of DefaultOutOfRange one"),
    (_with_rules({"min_nodes": 2}), "rules of backend 'torchops' are dict, not an edgeport.PartitionRules",
     "set rules = edgeport.PartitionRules("),
    (_with_rules(edgeport.PartitionRules(min_nodes="2")), "rules of backend 'torchops' have min_nodes='2', not a whole",
     "set rules = edgeport.PartitionRules("),
    (_with_rules(edgeport.PartitionRules(never_alone="aten.view.default")), "have never_alone='aten.view.default', "
     "not a set of ops", "as strings (str(op))"),
    (SchemesText(), "schemes of backend 'torchops' are 'int8', not a set of scheme names", "frozenset({\"int8\"})"),
    (SchemeMisspelled(), "schemes of backend 'torchops' name 'int-4', which edgeport has no scheme of",
     "offer schemes from: int8, int8-dynamic, int4-weight"),
    (DefaultNotOffered(), "default_scheme of backend 'torchops' is 'a16w8', which is not one of its schemes (int8)",
     "name one of schemes"),
    (FloatVersion(), "backend 'torchops' has version 1.2, not a non-empty string", "version = '1.2.0'"),
    (NoVersion(), "backend 'torchops' has version None, not a non-empty string", "version = '1.2.0'"),
])
def test_a_backend_that_breaks_the_contract_is_a_broken_plugin_at_registration(backend, error, hint):
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(backend), name="sloppy", distribution="sloppy-dist")
    registry.add_plugin(plugin(TorchOpsBackend(name="good")), name="good")
    assert list(registry.entries()) == ["good"]
    [broken] = registry.broken()
    assert broken.plugin == "sloppy" and error in broken.error and hint in broken.hint
    name = getattr(backend, "name", None)
    if isinstance(name, str):  # asked for by its backend name, not its plugin's: the refusal, not a generic hint
        with pytest.raises(edgeport.UnknownBackendError) as info:
            registry.get(name)
        assert info.value.hint.startswith(f"backend {name!r} (plugin 'sloppy') was refused at registration: ")
        assert error in info.value.hint


def test_a_misspelled_hook_argument_is_a_broken_plugin_with_pluggys_message():
    class Misspelled:
        @edgeport.hookimpl
        def edgeport_register_backends(self, regster):
            regster(TorchOpsBackend(name="never"))

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(Misspelled(), name="typo", distribution="typo-dist")
    registry.add_plugin(plugin(TorchOpsBackend()), name="good")
    for _ in range(2):  # recorded once, and the others work on every call
        assert list(registry.entries()) == ["torchops"]
        [broken] = registry.broken()
        assert (broken.plugin, broken.distribution) == ("typo", "typo-dist")
        assert broken.error.startswith("PluginValidationError: Plugin 'typo' for hook 'edgeport_register_backends'")
        assert "{'regster'}" in broken.error and "\n" not in broken.error


def test_a_hook_without_its_marker_is_a_broken_plugin_not_a_silent_one():
    """pluggy skips a function without @hookimpl: the plugin registered nothing, and no
    command said why its backend was missing."""
    class Unmarked:
        def edgeport_register_backends(self, register):
            register(TorchOpsBackend(name="never"))

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(Unmarked(), name="unmarked")
    assert registry.entries() == {}
    [broken] = registry.broken()
    assert broken.error == ("edgeport_register_backends is not marked @edgeport.hookimpl, so edgeport never calls it")
    assert broken.hint == "decorate each hook with @edgeport.hookimpl"


def test_a_misspelled_hook_name_is_a_broken_plugin():
    class Misspelled:
        @edgeport.hookimpl
        def edgeport_register_backend(self, register):
            register(TorchOpsBackend(name="never"))

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(Misspelled(), name="typo")
    assert registry.entries() == {}
    [broken] = registry.broken()
    assert "edgeport_register_backend is not an edgeport hook" in broken.error
    assert "edgeport_register_backends" in broken.hint


class GrownSpecs:
    """The hookspecs of a later edgeport whose register hook passes one more argument."""

    @edgeport.hookspecs.hookspec
    def edgeport_register_backends(self, register, accelerators):
        """As today, plus the accelerators this machine has."""

    @edgeport.hookspecs.hookspec
    def edgeport_register_commands(self, cli):
        """As today."""


class GrownRegistry(edgeport.Registry):
    specs = GrownSpecs

    def _register_arguments(self, register):
        return {"register": register, "accelerators": ("npu",)}


def test_a_plugin_written_before_a_hook_grew_an_argument_keeps_working():
    class Newer:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register, accelerators):
            register(TorchOpsBackend(name=f"{accelerators[0]}_backend"))

    registry = GrownRegistry(entry_points=False)
    registry.add_plugin(plugin(TorchOpsBackend()), name="older")  # takes only `register`
    registry.add_plugin(Newer(), name="newer")
    assert list(registry.entries()) == ["torchops", "npu_backend"]
    assert registry.broken() == []


def test_a_plugin_whose_availability_raises_is_still_listed():
    class Flaky(TorchOpsBackend):
        def availability(self):
            raise OSError("libvendor.so: cannot open shared object file")

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(Flaky(name="flaky")), name="flaky")
    availability = registry.entry("flaky").availability()
    assert (availability.can_compile, availability.can_run) == (False, False)
    assert availability.why == "availability() raised OSError: libvendor.so: cannot open shared object file"


def test_eight_threads_making_the_first_call_all_find_the_backends(monkeypatch):
    class SlowEntryPoint:  # importing a real plugin takes time: that is the window of the race
        name = "slow"
        dist = types.SimpleNamespace(name="slow-dist", version="1.0")

        def load(self):
            time.sleep(0.05)
            return plugin(TorchOpsBackend(name="slow"))

    monkeypatch.setattr(edgeport.plugins.metadata, "entry_points", lambda group: [SlowEntryPoint()])
    registry = edgeport.Registry()
    start = threading.Barrier(8)

    def first_call(_):
        start.wait()
        return registry.get("slow").name

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(first_call, range(8))) == ["slow"] * 8


def test_disabled_plugins_are_not_loaded(monkeypatch):
    monkeypatch.setenv("EDGEPORT_DISABLE_PLUGINS", "good, other")
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(TorchOpsBackend()), name="good")
    assert registry.entries() == {}


def test_a_disabled_backend_is_said_to_be_disabled_not_missing(monkeypatch):
    """check and run said "backend 'numpy_npu' is not installed" of a plugin the user blocked."""
    monkeypatch.setenv("EDGEPORT_DISABLE_PLUGINS", "torchops")
    registry = edgeport.Registry(entry_points=False)
    with pytest.raises(edgeport.UnknownBackendError, match="backend 'torchops' is disabled by EDGEPORT_DISABLE_PLUGINS"
                       ) as info:
        registry.entry("torchops")
    assert info.value.disabled and "take 'torchops' out of EDGEPORT_DISABLE_PLUGINS" in info.value.hint
    with pytest.raises(edgeport.UnknownBackendError, match="unknown backend 'other'") as info:
        registry.entry("other")
    assert not info.value.disabled


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


def test_every_backend_method_states_its_contract_where_an_ide_shows_it():
    """When it is called and what it returns, on every method a plugin may override."""
    import inspect

    methods = {n: m for n, m in vars(edgeport.Backend).items() if not n.startswith("_") and inspect.isfunction(m)}
    methods["version"] = edgeport.Backend.version.fget
    assert set(methods) == {"version", "availability", "keep_ops", "prepare", "support", "quantizer", "compile",
                            "load", "tolerance", "op_error", "accumulator_error", "merge"}
    for name, method in methods.items():
        doc = inspect.getdoc(method) or ""
        assert "call" in doc.lower() or "read" in doc.lower(), f"{name}() does not say when edgeport calls it"
        assert "return" in doc.lower(), f"{name}() does not say what to return"


def test_a_plugin_that_exits_is_a_broken_plugin_not_the_end_of_the_process(monkeypatch):
    """A SystemExit at import (a vendor library finding no device) ended every command,
    `-b cpu` included; one raised from a hook ended `export` with no output."""
    failing_entry_point(monkeypatch, SystemExit("libfoo: fatal: no device"))
    registry = edgeport.Registry()
    registry.add_plugin(plugin(fail=SystemExit(3)), name="exits", distribution="exits-dist")
    registry.add_plugin(plugin(TorchOpsBackend()), name="good")
    assert list(registry.entries()) == ["torchops"]
    assert sorted((b.plugin, b.error) for b in registry.broken()) == [
        ("acme", "SystemExit: libfoo: fatal: no device"), ("exits", "SystemExit: 3")]


class VendorAbort(BaseException):
    """A vendor library's own BaseException (not an Exception)."""


def test_a_plugin_raising_any_base_exception_but_an_interrupt_is_a_broken_plugin(monkeypatch):
    """One that raised its own BaseException from a hook took `edgeport run` down."""
    failing_entry_point(monkeypatch, VendorAbort("fatal"))
    registry = edgeport.Registry()
    registry.add_plugin(plugin(fail=VendorAbort("in the hook")), name="aborts")
    registry.add_plugin(plugin(TorchOpsBackend()), name="good")
    assert list(registry.entries()) == ["torchops"]
    assert sorted((b.plugin, b.error) for b in registry.broken()) == [
        ("aborts", "VendorAbort: in the hook"), ("acme", "VendorAbort: fatal")]
    interrupted = edgeport.Registry(entry_points=False)
    interrupted.add_plugin(plugin(fail=KeyboardInterrupt()), name="interrupted")
    with pytest.raises(KeyboardInterrupt):  # the user's Ctrl-C still stops the command
        interrupted.entries()


def test_what_a_plugin_prints_goes_to_stderr_not_into_json(monkeypatch, capsys):
    class Chatty:
        name, dist = "chatty", types.SimpleNamespace(name="chatty-edgeport", version="1.0")

        def load(self):
            print("GARBAGE FROM PLUGIN IMPORT")
            return plugin(TorchOpsBackend())

    monkeypatch.setattr(edgeport.plugins.metadata, "entry_points", lambda group: [Chatty()])
    assert list(edgeport.Registry().entries()) == ["torchops"]
    out, err = capsys.readouterr()
    assert out == "" and "GARBAGE FROM PLUGIN IMPORT" in err


@pytest.mark.parametrize("register, error", [
    (lambda register: register(TorchOpsBackend(name="npu_one"), aliases=("n p u",)), "invalid backend alias(es) 'n p u'"),
    (lambda register: register(TorchOpsBackend(name="npu_one"), aliases=("portable",)), "alias(es) 'portable'"),
])
def test_a_bad_alias_is_a_broken_plugin(register, error):
    calls = register

    class Hook:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            calls(register)

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(Hook(), name="sloppy")
    [broken] = registry.broken()
    assert error in broken.error and registry.entries() == {}


def test_one_alias_given_as_a_string_is_one_alias():
    class Hook:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            register(TorchOpsBackend(), aliases="npu")

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(Hook(), name="p")
    assert registry.entry("torchops").aliases == ("npu",) and registry.get("npu").name == "torchops"


def test_an_availability_of_the_wrong_type_says_so_and_the_listing_works():
    """It broke `edgeport backends` with an internal AttributeError."""
    class Tuple(TorchOpsBackend):
        def availability(self):
            return (True, True)

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(Tuple(name="tupled")), name="tupled")
    availability = registry.entry("tupled").availability()
    assert (availability.can_compile, availability.why) == (
        False, "availability() returned tuple, not an edgeport.Availability")


def test_a_plugin_command_named_like_a_built_in_is_not_added():
    """A plugin's `export` replaced edgeport's own (`-o` then was 'No such option')."""
    group = click.Group(commands={"export": click.Command("export", callback=lambda: None)})
    builtin = group.commands["export"]

    class Commands:
        @edgeport.hookimpl
        def edgeport_register_commands(self, cli):
            cli.add_command(click.Command("export", callback=lambda: None))
            cli.add_command(click.Command("npu-info", callback=lambda: None))

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(Commands(), name="clash", distribution="clash-dist")
    registry.add_commands(group)
    assert group.commands["export"] is builtin and "npu-info" in group.commands
    [broken] = registry.broken()
    assert broken.plugin == "clash" and "command(s) export would replace edgeport's own" in broken.error


class _Misbuilt(TorchOpsBackend):
    """compile, load or run returning what the contract does not allow."""

    def __init__(self, fault, **kwargs):
        super().__init__(**kwargs)
        self.fault = fault

    def compile(self, program, options):
        artifact = super().compile(program, options)
        return edgeport.Artifact("not bytes") if self.fault == "compile" else artifact

    def load(self, artifact):
        executable = super().load(artifact)
        if self.fault == "load":
            return object()
        if self.fault == "load raises":
            raise ValueError("subgraph.cc:1965\nrequired_bytes <= bytes was not true.")

        fault = self.fault

        class Run:
            def run(self, inputs):
                if fault == "raises":
                    raise RuntimeError("vendor runtime: device lost\n  at npu.cc:12")
                if fault in WRONG_OUTPUTS:
                    return [WRONG_OUTPUTS[fault](np.asarray(inputs[0]))]
                return None if fault == "run" else [[1.0, 2.0]]

        return Run() if fault in ("run", "lists", "raises", *WRONG_OUTPUTS) else executable


WRONG_OUTPUTS = {"extra dim": lambda x: np.maximum(x, 0)[None], "float64": lambda x: np.maximum(x, 0).astype(np.float64)}
CONTRACT_HINT = "a bug of backend 'torchops': its executable's run() must "


@pytest.mark.parametrize(("fault", "error", "message"), [
    ("load", edgeport.BackendError, "load\\(\\) returned object, which has no run\\(\\) method"),
    ("load raises", edgeport.ProgramError,  # the toolchain's message on one line, as every error is
     r"cannot load partition 0: ValueError: subgraph.cc:1965 required_bytes <= bytes was not true\.$"),
    ("run", edgeport.ExecutionError, "returned NoneType, not a list of outputs"),
    ("lists", edgeport.ExecutionError, "returned a list as an output, not an array or tensor"),
    ("raises", edgeport.ExecutionError,  # was edgeport's "internal error", in two lines
     r"step 0 \(torchops\) failed: RuntimeError: vendor runtime: device lost at npu.cc:12$"),
    ("extra dim", edgeport.ExecutionError,  # was returned as it was: a (1, 2) output of a (2,) model
     r"step 0 \(torchops\) returned output 0 \(relu\) as float32 \[1, 2\]; its partition computes float32 \[2\]"),
    ("float64", edgeport.ExecutionError, r"returned output 0 \(relu\) as float64 \[2\]; its partition computes float32"),
])
def test_a_load_or_run_that_breaks_the_contract_is_one_error_naming_it(fault, error, message):
    """An AttributeError or TypeError from inside edgeport, or (lists) a Python list
    handed to the user as the output."""
    import torch

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(_Misbuilt(fault, ops=("relu",))), name="misbuilt")
    program = edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    with pytest.raises(error, match=message):
        program(torch.ones(2))


@pytest.mark.parametrize("fault", WRONG_OUTPUTS)
def test_a_wrong_output_is_named_at_its_step_not_passed_on(fault):
    """A torch step after it broadcast a (1, 2) output into the program's answer, and the
    next backend blamed itself for a float64 one."""
    import torch

    class ReluThenCos(torch.nn.Module):
        def forward(self, x):
            return x.relu().cos()

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(_Misbuilt(fault, ops=("relu",))), name="misbuilt")
    program = edgeport.export(ReluThenCos(), (torch.ones(2),), ["torchops"], registry=registry)
    assert [s.kind for s in program.plan("forward").steps] == ["delegate", "portable"]
    with pytest.raises(edgeport.ExecutionError, match=r"^step 0 \(torchops\) returned output 0 \(relu\)") as raised:
        program(torch.ones(2))
    assert raised.value.hint == (CONTRACT_HINT + "return each output in its partition's dtype and shape; report it "
                                 "to the plugin's authors, or export without torchops")  # was "backend 'torchops''s run() returns ..."


@pytest.mark.parametrize(("returned", "message", "must"), [
    ((), "returned 0 outputs, expected 1", "return one array per output of its partition, in order"),
    (None, "returned NoneType, not a list of outputs", "return a list of arrays"),
])
def test_a_wrong_number_of_outputs_is_said_to_be_the_plugins_bug(returned, message, must):
    """The count had no hint at all, and not-a-list one that did not say whose it was."""
    import torch

    class Returns(TorchOpsBackend):
        def load(self, artifact):
            return types.SimpleNamespace(run=lambda inputs: returned)

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(Returns(ops=("relu",))), name="returns")
    program = edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    with pytest.raises(edgeport.ExecutionError, match=f"^step 0 \\(torchops\\) {message}$") as raised:
        program(torch.ones(2))
    assert raised.value.hint.startswith(CONTRACT_HINT + must)


def test_a_compile_that_returns_text_for_bytes_falls_back_with_the_reason():
    import torch

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(_Misbuilt("compile", ops=("relu",))), name="misbuilt")
    program = edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    [node] = [n for n in program.report()["nodes"] if n["op"] == "aten.relu.default"]
    assert node["backend"] == "portable"
    assert "Artifact whose data is str, not bytes" in node["reasons"]["torchops"]


@pytest.mark.parametrize("ops", [{"aten.linear.default"}, "aten.linear.default"])
def test_keep_ops_of_names_is_a_backend_error_naming_the_backend(ops):
    """Names (natural: support's reasons use them) ended the export with an internal
    AttributeError or TypeError."""
    import torch

    class Named(TorchOpsBackend):
        def keep_ops(self):
            return ops

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(Named(ops=("relu",))), name="named")
    with pytest.raises(edgeport.BackendError, match="backend 'torchops': keep_ops\\(\\) holds 'aten.linear"):
        edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)


def test_keep_ops_that_raises_is_a_backend_error_naming_the_backend():
    """It was edgeport's "internal error: RuntimeError: ... please report it"."""
    import torch

    class Raises(TorchOpsBackend):
        def keep_ops(self):
            raise RuntimeError("npu op list missing")

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(Raises(ops=("relu",))), name="raises")
    with pytest.raises(edgeport.BackendError, match="^backend 'torchops': keep_ops\\(\\) raised RuntimeError: npu op "
                                                    "list missing$") as info:
        edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    assert info.value.hint.startswith("a bug in the backend")


class RaisingVersion(TorchOpsBackend):
    """Its version raises once its SDK is asked a second time (read once at registration)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    @property
    def version(self):
        self.reads += 1
        if self.reads > 1:
            raise RuntimeError("sdk not initialised")
        return "1.0"


def test_a_version_that_raises_is_refused_naming_the_backend_before_any_work():
    """It was an "internal error ... please report it", for the kit after every case ran."""
    import torch

    from edgeport.testing.kit import run_kit

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(RaisingVersion()), name="raising")
    message = "backend 'torchops': reading its version raised RuntimeError: sdk not initialised"
    with pytest.raises(edgeport.BackendError, match=message):
        edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    backend = RaisingVersion()
    backend.reads = 1
    with pytest.raises(edgeport.BackendError, match=message):
        run_kit(backend, cases=[])
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(backend), name="raising")  # registered in code: read, and refused, at once
    [broken] = registry.broken()
    assert broken.error == message and "report it to its authors" in broken.hint


def test_a_load_that_raises_is_said_to_be_the_backends_not_the_files():
    """Its hint said "re-export the model ...", for a RuntimeError("device not found")."""
    import torch

    class NoDevice(TorchOpsBackend):
        def load(self, artifact):
            raise RuntimeError("libnpu: device not found")

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(NoDevice(ops=("relu",))), name="nodevice")
    program = edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    with pytest.raises(edgeport.ProgramError, match="cannot load partition 0: RuntimeError: libnpu: device not found$"
                       ) as raised:
        program(torch.ones(2))
    assert raised.value.hint.startswith("torchops's load() raised this: a problem of the plugin or of its device")
    assert "re-export" not in raised.value.hint


def test_a_load_that_raises_after_the_backend_changed_version_names_both_versions(tmp_path):
    """The manifest records the version that compiled each artifact, and nothing read it:
    a toolchain upgrade that cannot read old artifacts said only "a problem of the plugin"."""
    import torch

    class Upgraded(TorchOpsBackend):
        version = "1.0"

        def load(self, artifact):
            if self.version != "1.0":
                raise RuntimeError("unknown blob format 3")
            return super().load(artifact)

    backend = Upgraded(ops=("relu",))
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(backend), name="upgraded")
    edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry).save(tmp_path / "m.edgeport")
    backend.version = "2.0"
    program = edgeport.load(tmp_path / "m.edgeport", registry=registry)
    with pytest.raises(edgeport.ProgramError, match="cannot load partition 0: RuntimeError: unknown blob format 3; "
                       "it was compiled by torchops 1.0, and this is torchops 2.0$") as raised:
        program(torch.ones(2))
    assert raised.value.hint.startswith("re-export the model with torchops 2.0, or run it where torchops 1.0")


@pytest.mark.parametrize(("distribution", "hint"), [
    ("edgeport", "install its toolchain (pip install 'edgeport[torchops]') or choose another backend"),
    ("acme-npu", "install what acme-npu, the distribution of backend 'torchops', needs to compile"),
])
def test_a_backend_that_cannot_compile_hints_at_its_own_distribution(distribution, hint):
    """A plugin's backend was told to `pip install 'edgeport[acme_ort]'`, an extra edgeport lacks."""
    import torch

    class NoCompiler(TorchOpsBackend):
        def availability(self):
            return edgeport.Availability(False, True, why="the ACME compiler is not installed")

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(NoCompiler()), name="acme", distribution=distribution)
    with pytest.raises(edgeport.BackendError, match="cannot compile on this machine: the ACME compiler") as raised:
        edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    assert raised.value.hint.startswith(hint)


def test_a_read_only_output_reaches_torch_as_a_copy_it_may_write():
    """An executable returning read-only arrays passed the kit, and the caller got a tensor
    over that memory (here immutable bytes), with torch's warning that writes are undefined."""
    import warnings

    import torch

    blob = np.arange(2, dtype=np.float32).tobytes()

    class FromBytes(TorchOpsBackend):
        def load(self, artifact):
            return types.SimpleNamespace(run=lambda inputs: [np.frombuffer(blob, dtype=np.float32)])

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(FromBytes(ops=("relu",))), name="frombytes")
    program = edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["torchops"], registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable"
        y = program(torch.ones(2))
    y += 1
    assert y.tolist() == [1.0, 2.0] and blob == np.arange(2, dtype=np.float32).tobytes()


def test_run_gets_the_user_inputs_in_order_and_never_the_weights():
    """writing-a-backend.md says so: the partition's program lists its lifted weights
    first, and nothing said whether run() is handed them too."""
    import torch

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((3,), 2.0))

        def forward(self, x, y):
            return (x - y) * self.w

    given, compiled = [], []

    class Records(TorchOpsBackend):
        def compile(self, program, options):
            compiled.append((list(program.graph_signature.user_inputs), list(program.state_dict)))
            return super().compile(program, options)

        def load(self, artifact):
            inner = super().load(artifact)
            return types.SimpleNamespace(run=lambda inputs: given.append(list(inputs)) or inner.run(inputs))

    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(Records(ops=("sub", "mul"))), name="records")
    x, y = torch.ones(3), torch.zeros(3)
    program = edgeport.export(Scaled(), (x, y), ["torchops"], registry=registry)
    assert program(x, y).tolist() == [2.0, 2.0, 2.0]
    assert compiled == [(["x", "y"], ["w"])]  # the partition's program holds the weight ...
    [inputs] = given
    assert [t.tolist() for t in inputs] == [x.tolist(), y.tolist()]  # ... and run() is given x and y alone


def test_a_plugin_that_is_slow_to_import_or_register_is_named_with_how_to_block_it(monkeypatch, caplog):
    """A vendor library waiting for a device or a licence server hung every command with
    nothing said; the plugin still runs (it may only be slow), and a user can now tell
    which one to block."""
    class SlowImport:
        name, dist = "acme", types.SimpleNamespace(name="acme-edgeport", version="1.0")

        def load(self):
            time.sleep(0.5)
            return plugin(TorchOpsBackend(name="acme_npu"))

    class SlowHook:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            time.sleep(0.5)
            register(TorchOpsBackend(name="slow_npu"))

    monkeypatch.setattr(edgeport.plugins, "SLOW_PLUGIN_SECONDS", 0.1)
    monkeypatch.setattr(edgeport.plugins.metadata, "entry_points", lambda group: [SlowImport()])
    registry = edgeport.Registry()
    registry.add_plugin(SlowHook(), name="slowhook")
    with caplog.at_level("WARNING", logger="edgeport.plugins"):
        assert sorted(registry.entries()) == ["acme_npu", "slow_npu"]
    assert caplog.messages == [
        "plugin 'acme' (from acme-edgeport) has been in its import for 0.1 s; if it hangs, interrupt it (Ctrl-C) "
        "and block it with EDGEPORT_DISABLE_PLUGINS=acme",
        "plugin 'slowhook' has been in its edgeport_register_backends hook for 0.1 s; if it hangs, interrupt it "
        "(Ctrl-C) and block it with EDGEPORT_DISABLE_PLUGINS=slowhook"]


def test_a_plugin_that_loads_in_time_is_not_named_later(monkeypatch, caplog):
    monkeypatch.setattr(edgeport.plugins, "SLOW_PLUGIN_SECONDS", 0.1)
    registry = edgeport.Registry(entry_points=False)
    registry.add_plugin(plugin(TorchOpsBackend()), name="quick")
    with caplog.at_level("WARNING", logger="edgeport.plugins"):
        assert list(registry.entries()) == ["torchops"]
        time.sleep(0.3)  # past the limit: the timer was cancelled when the hook returned
    assert caplog.messages == []


def test_a_plugin_that_hangs_at_import_is_named_and_ctrl_c_ends_the_command_in_one_line(tmp_path):
    """As a user meets it: an installed plugin whose import never returns. `edgeport
    backends` names it on stderr, and Ctrl-C ends the command with "interrupted" (130),
    not a traceback from inside the plugin's import."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "hangs_at_import.py").write_text("import time\nwhile True:\n    time.sleep(0.05)\n")
    info = tmp_path / "hangs_at_import-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hangs-at-import\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[edgeport]\nhangs = hangs_at_import\n")
    script = ("import edgeport.plugins as plugins; plugins.SLOW_PLUGIN_SECONDS = 0.5; "
              "from edgeport.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", script, "backends"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    said = child.stderr.readline()  # blocks until the plugin is named
    child.send_signal(signal.SIGINT)
    out, rest = child.communicate(timeout=60)
    assert said == ("plugin 'hangs' (from hangs-at-import) has been in its import for 0.5 s; if it hangs, "
                    "interrupt it (Ctrl-C) and block it with EDGEPORT_DISABLE_PLUGINS=hangs\n")
    assert child.returncode == 130 and rest.strip() == "interrupted" and out == ""
