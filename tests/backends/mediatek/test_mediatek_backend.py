"""The mediatek backend: registration, availability, options, NeuroPilot's rules in support
and compile, the artifact, the CPU reference run, the device runner and the AOT driver."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeport
import edgeport.backends.mediatek as mediatek_plugin
from edgeport.backends import tflite
from edgeport.backends.mediatek import MediatekBackend, MediatekOptions
from edgeport.backends.mediatek import aot, bundle, neuropilot, toolchain, written
from edgeport.backends.mediatek.runtime import CompiledModelExecutable
from edgeport.testing import CASES, compare, installed_backends, registered_by, registry_for
from edgeport.testing.kit import Verdict, run_kit

NO_APU = toolchain.apu_missing()
NO_SDK = toolchain.sdk_libs_missing("v8")


class TinyCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)  # 432 weights: enough to be stored as fp16
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = F.relu6(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@pytest.fixture
def tiny():
    return TinyCnn().eval(), (torch.randn(1, 3, 16, 16),)


def edge(module, *inputs):
    return torch.export.export(module, inputs).run_decompositions()


def support_of(module, *inputs):
    """{node name: Support} for every computed node of the module's edge program."""
    program = edge(module, *inputs)
    ctx = edgeport.SupportContext(program, MediatekOptions())
    backend = MediatekBackend()
    return {n.name: backend.support(n, ctx) for n in program.graph_module.graph.nodes if n.op == "call_function"}


def export(module, inputs, **options):
    backend = MediatekBackend()
    return edgeport.export(module, inputs, ["mediatek"], options={"mediatek": options}, registry=registry_for(backend))


# -- plugin, availability, options ---------------------------------------------------------


def test_plugin_registers_the_mediatek_backend():
    assert isinstance(registered_by(mediatek_plugin)["mediatek"], MediatekBackend)


def test_edgeport_backends_lists_mediatek():
    listed = installed_backends()["mediatek"]
    assert listed["distribution"] == "edgeport"
    assert listed["runs_on"] == ("reference (CPU)" if NO_APU else "device")


@pytest.mark.slow
def test_import_is_cheap():
    """Importing the plugin loads no LiteRT module."""
    script = "import sys, edgeport.backends.mediatek\nprint(any(k.startswith('ai_edge_litert') for k in sys.modules))\n"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "False\n"


@pytest.mark.skipif(not NO_APU, reason="this machine is a MediaTek device")
def test_availability_says_it_runs_a_cpu_reference_here():
    assert MediatekBackend().availability() == edgeport.Availability(
        can_compile=True,
        can_run=True,
        runs_on="reference (CPU)",
        why="no MediaTek APU on this machine: runs the same TFLite on LiteRT's CPU as a reference",
    )


def test_options_and_soc_names_are_litert_s():
    from edgeport.backends.mediatek.options import check_soc, soc_models

    assert MediatekOptions() == MediatekOptions(soc="MT6989", fp16=False, threads=0)
    assert {"MT6985", "MT6989", "MT6991"} <= set(soc_models())
    assert check_soc("mt6991") == "MT6991"
    with pytest.raises(edgeport.BackendError, match="'MT1234' is not a SoC") as info:
        check_soc("MT1234")
    assert "MT6989" in info.value.hint


def test_unknown_soc_fails_the_export_naming_it(tiny):
    module, inputs = tiny
    with pytest.raises(edgeport.BackendError, match="option mediatek.soc='MT0000' is not one of: .*MT6989"):
        edgeport.export(module, inputs, ["mediatek"], options={"mediatek": {"soc": "MT0000"}},
                        registry=registry_for(MediatekBackend()))


def test_legalized_ops_are_tflite_builtin_names():
    from ai_edge_litert import schema_py_generated as schema

    assert neuropilot.LEGALIZED_OPS <= set(vars(schema.BuiltinOperator))


def test_every_op_the_rules_legalize_is_in_the_installed_plugins_list():
    """kSupportedOps as the installed plugin has it: an int32 array of TFLite builtin
    codes in its read-only data, found by its first four entries (ADD, MUL,
    BATCH_MATMUL, FULLY_CONNECTED). Our rules never claim an op the plugin would leave
    to the CPU. (It also lists TILE, UNPACK and the StableHLO composite: see neuropilot.py.)"""
    import struct

    from ai_edge_litert import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    directory = toolchain.compiler_plugin_dir()
    if directory is None:
        pytest.skip("LiteRT's MediaTek compiler plugin is not installed")
    (plugin,) = directory.glob("libLiteRtCompilerPlugin_MediaTek*")
    data = plugin.read_bytes()
    at = data.find(struct.pack("<4i", 0, 18, 126, 9))
    assert at >= 0, "kSupportedOps not found: the plugin changed, read its compiler_plugin.cc again"
    listed = set()
    while (code := struct.unpack_from("<i", data, at)[0]) in names:
        listed.add(names[code])
        at += 4
    assert neuropilot.LEGALIZED_OPS <= listed, sorted(neuropilot.LEGALIZED_OPS - listed)


# -- support: each decline names its rule --------------------------------------------------


def test_rank_5_is_declined_with_the_rank_rule():
    answers = support_of(Fn(lambda x: x.unsqueeze(1).expand(2, 3, 1, 4, 5) + 1), torch.randn(2, 1, 4, 5))
    declined = {name: s.reason for name, s in answers.items() if not s}
    assert declined and all("MediaTek NeuroPilot: rank 5 > 4" in r for r in declined.values()), declined


def test_op_the_plugin_does_not_legalize_is_declined_naming_op_and_source():
    answers = support_of(Fn(lambda x: torch.exp(x) + 1), torch.randn(2, 8))
    assert answers["add"]
    assert answers["exp"].reason == (
        "MediaTek NeuroPilot: aten.exp.default (written as EXP) is not legalized by the compiler plugin "
        "(litert/vendors/mediatek/compiler/compiler_plugin.cc, kSupportedOps)"
    )


def test_runtime_int64_is_declined_with_the_dtype_rule():
    answers = support_of(Fn(lambda i: (i * 2).float()), torch.arange(6))
    assert "dtype int64 at run time" in answers["mul"].reason
    assert "neuron_utils.cc" in answers["mul"].reason


def test_layer_norm_square_and_neg_are_taken_as_the_muls_the_writer_writes():
    """The writer writes x * x and x * -1 (MUL), not SQUARE and NEG, which the plugin refuses."""
    answers = support_of(nn.LayerNorm(16), torch.randn(2, 16))
    answers |= support_of(Fn(lambda x: x.pow(2).mean(-1, keepdim=True) - x), torch.randn(2, 16))
    answers |= support_of(Fn(lambda x: torch.cat((-x[..., 4:], x[..., :4]), -1)), torch.randn(2, 8))
    assert all(answers.values()), {k: v.reason for k, v in answers.items() if not v}


def test_an_unequal_split_is_taken_as_the_slices_the_writer_writes():
    """LeViT splits query, key and value in unequal parts: the writer writes a SLICE per
    part, which the plugin legalizes, not a SPLIT_V, which it does not."""
    answers = support_of(Fn(lambda x: [p * 2 for p in (x + 1).split([2, 2, 4], dim=-1)]), torch.randn(1, 3, 5, 8))
    assert all(answers.values()), {k: v.reason for k, v in answers.items() if not v}


def test_relu6_fused_into_its_conv_is_taken():
    answers = support_of(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6()).eval(), torch.randn(1, 3, 8, 8))
    assert all(answers.values()), {k: v.reason for k, v in answers.items() if not v}


# -- compile: the artifact and its checks --------------------------------------------------


def test_compile_makes_a_plain_tflite_and_says_why_not_aot(tiny):
    module, inputs = tiny
    artifact = MediatekBackend().compile(edge(module, *inputs), MediatekOptions(soc="mt6985"))
    assert artifact.suffix == ".tflite" and artifact.data[4:8] == b"TFL3"
    meta = artifact.metadata
    assert meta["soc"] == "MT6985" and meta["ops"]["CONV_2D"] == 1 and meta["apu_precision"].startswith("fp16")
    if NO_SDK:
        assert meta["aot"] is False and meta["why"] == NO_SDK
    assert written.refusals(artifact.data) == []  # every op written is one the plugin takes


def test_compile_declines_nodes_whose_written_ops_the_plugin_refuses():
    """compile checks the model actually written, whatever support said."""
    program = edge(Fn(lambda x: torch.exp(x) * 2), torch.randn(2, 8))
    with pytest.raises(edgeport.DeclineNodes) as info:
        MediatekBackend().compile(program, MediatekOptions())
    assert list(info.value.reasons) == ["exp"]
    assert "EXP (written for node exp) is not legalized by the compiler plugin" in info.value.reasons["exp"]


def test_export_runs_on_the_cpu_reference_and_matches(tiny, tmp_path):
    module, inputs = tiny
    program = export(module, inputs, threads=2)
    assert [(s.kind, s.backend) for s in program.manifest.methods["forward"].steps] == [("delegate", "mediatek")]
    program.save(tmp_path / "m.edgeport")
    loaded = edgeport.load(tmp_path / "m.edgeport", registry=registry_for(MediatekBackend()))
    with torch.no_grad():
        assert compare(loaded(*inputs), module(*inputs)) < 1e-4
    expected = "mediatek: reference (CPU)" if NO_APU else "mediatek"
    assert loaded.runtime().step_labels("forward") == [expected]


def test_fp16_weights_within_their_stated_tolerance(tiny):
    """fp16 weights (DEQUANTIZEd at load, which the plugin takes): 1e-2 relative."""
    module, inputs = tiny
    program = export(module, inputs, fp16=True)
    artifact = next(iter(program.manifest.artifacts.values()))
    assert artifact.metadata["fp16_weights"] is True and "DEQUANTIZE" in artifact.metadata["ops"]
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < 1e-2


def test_conformance_sample_passes_and_names_every_rule():
    """A quick sample; test_mediatek_conformance.py runs every case."""
    names = {"conv2d", "neg_abs", "max_pool2d", "where_compare", "relu6", "split_chunk"}
    outcomes = run_kit(MediatekBackend(), cases=[c for c in CASES if c.name in names]).outcomes
    assert {o.case for o in outcomes if o.verdict is Verdict.PASSED} == names, [(o.case, o.message) for o in outcomes]
    reasons = {op: reason for o in outcomes for op, reason in o.declined.items()}
    assert set(reasons) == {"aten.where.self"}, reasons  # neg is written as a MUL, which the plugin takes
    assert all(reason.startswith("MediaTek NeuroPilot: ") for reason in reasons.values())


# -- artifact bytes, runners, AOT ------------------------------------------------------------


def test_aot_bundle_keeps_the_plain_model_beside_the_compiled_one():
    assert bundle.unpack(b"plain", aot=False) == (b"plain", None)
    assert bundle.unpack(bundle.pack(b"plain", b"compiled"), aot=True) == (b"plain", b"compiled")
    with pytest.raises(edgeport.ProgramError, match="is not a zip"):  # the file's fault, not the toolchain's
        bundle.unpack(b"plain", aot=True)


def test_device_runner_code_on_litert_cpu(tiny):
    """The CompiledModel runner a MediaTek device uses, driven here with LiteRT's CPU
    accelerator in place of the NPU (this checks our buffer handling, not an APU)."""
    module, inputs = tiny
    artifact = MediatekBackend().compile(edge(module, *inputs), MediatekOptions())
    runner = CompiledModelExecutable(artifact.data, threads=1, npu=False)
    (out,) = runner.run(list(inputs))
    with torch.no_grad():
        assert compare(torch.from_numpy(out), module(*inputs)) < 1e-4


@pytest.mark.skipif(bool(NO_APU), reason=NO_APU or "on a MediaTek device")
def test_runs_on_the_apu(tiny):
    module, inputs = tiny
    program = export(module, inputs)
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < 1e-2  # the APU computes in fp16
    assert program.runtime().step_labels("forward") == ["mediatek"]


@pytest.mark.skipif(not NO_SDK, reason="the NeuroPilot SDK is installed")
def test_aot_driver_without_sdk_stops_at_the_neuron_adapter():
    """LiteRT's real AOT driver and MediaTek plugin run up to loading NeuroPilot."""
    model = tflite.write_tflite(edge(Fn(lambda x: x * 2 + 1), torch.randn(1, 4)))
    with pytest.raises(edgeport.BackendError, match="AOT compile for MT6989 failed: Failed to load NeuronAdapter"):
        aot.compile_for_apu(model.data, "MT6989")


@pytest.mark.skipif(bool(NO_SDK), reason=NO_SDK or "SDK installed")
def test_aot_compiles_for_the_soc_and_keeps_the_reference(tiny):
    module, inputs = tiny
    artifact = MediatekBackend().compile(edge(module, *inputs), MediatekOptions(soc="MT6989"))
    assert artifact.suffix == ".zip" and artifact.metadata["aot"] is True
    plain, compiled = bundle.unpack(artifact.data, aot=True)
    assert compiled != plain and artifact.metadata["apu_ops"].split("/")[0] != "0"
    with torch.no_grad():
        out = MediatekBackend().load(artifact).run(list(inputs))
        assert compare(torch.from_numpy(out[0]), module(*inputs)) < 1e-2
