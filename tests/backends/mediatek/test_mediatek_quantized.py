"""The mediatek backend quantized: int8 (A8W8) TFLite under NeuroPilot's rules, the
quantized conformance cases against their fake-quantized reference (run on the labelled
LiteRT CPU reference here), and the schemes it declines with NeuroPilot's reason."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend, neuropilot, written
from edgeport.backends.mediatek.toolchain import apu_missing
from edgeport.cli import cli
from edgeport.devtools.quant_check import sqnr_db
from edgeport.testing import QUANTIZED_CASES, reference_program, registry_for, run_quantized_conformance
from edgeport.testing.quantized_cases import calibration_for

# int8 forms the cpu keeps float (XNNPACK runs them only in float); NeuroPilot takes them
# in int8 (all in the plugin's kSupportedOps), and on the CPU reference TFLite's own
# int8 kernels run them.
INT8_WHERE_CPU_KEEPS_FLOAT = {"int8_relu", "int8_hardswish", "int8_softmax", "int8_avg_pool2d", "int8_gelu", "int8_bmm"}
# RELU6 is not in the plugin's kSupportedOps (float or int8): the case is declined whole.
NOT_LEGALIZED = {"int8_relu6"}
ROOT = Path(__file__).resolve().parents[3]


class RankFiveMiddle(nn.Module):
    """Convs NeuroPilot takes, around a rank-5 relu it cannot (NNAPI ranks stop at 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = torch.relu(y.view(1, 2, 4, 6, 6)).view(1, 8, 6, 6)
        return self.b(y)


def _artifacts(program: edgeport.Program, backend: str = "mediatek") -> list[bytes]:
    return [program.files[path] for path, info in program.manifest.artifacts.items() if info.backend == backend]


@pytest.fixture(scope="module")
def conformance():
    return {r.name: r for r in run_quantized_conformance(MediatekBackend())}


@pytest.mark.slow
def test_every_int8_case_is_neuropilot_int8_and_matches_its_reference(conformance):
    assert len(conformance) == len(QUANTIZED_CASES)
    assert {name: (r.error, r.max_steps) for name, r in conformance.items() if not r.passed} == {}
    int8 = {c.name for c in QUANTIZED_CASES if c.scheme == "int8"}
    assert {name for name in int8 if conformance[name].delegated < 1.0} == NOT_LEGALIZED
    steps = {name: conformance[name].max_steps for name in int8 - NOT_LEGALIZED}
    print("\nint8 cases on mediatek (CPU reference), |mediatek - reference| in output steps:", steps)
    assert None not in steps.values()  # every one ran here, on the labelled reference
    for name in int8 - NOT_LEGALIZED:
        result = conformance[name]
        for data in _artifacts(result.program):
            assert written.refusals(data) == [], name
            assert written.quantized_types(data) == ["INT8"], name
        assert result.ops.get("DEQUANTIZE") == 1 and "CAST" not in result.ops, (name, result.ops)
    relu6 = conformance["int8_relu6"].reasons["aten.hardtanh.default"]
    assert "(written as RELU6) is not legalized by the compiler plugin" in relu6


@pytest.mark.slow
def test_the_ops_the_cpu_keeps_float_are_int8_on_mediatek(conformance):
    for name in INT8_WHERE_CPU_KEEPS_FLOAT:
        ops = conformance[name].ops
        inputs = next(len(c.build()[1]) for c in QUANTIZED_CASES if c.name == name)
        assert ops.get("QUANTIZE") == inputs and ops.get("DEQUANTIZE") == 1, (name, ops)
        assert conformance[name].max_steps <= 1.0 + 1e-3, name


@pytest.mark.slow
def test_run_time_and_groupwise_schemes_are_declined_with_neuropilots_reason(conformance):
    dynamic = {c.name: c.scheme for c in QUANTIZED_CASES if c.scheme != "int8"}
    assert dynamic
    for name, scheme in dynamic.items():
        result = conformance[name]
        assert result.passed and result.delegated == 0.0, name
        assert set(result.reasons.values()) == {
            f"mediatek does not offer {scheme} (it offers int8): {neuropilot.SCHEMES_DECLINED[scheme]}"}


def test_mediatek_and_cpu_each_quantize_their_own_partitions():
    torch.manual_seed(0)
    model, x = RankFiveMiddle().eval(), torch.randn(1, 3, 6, 6)
    program = edgeport.export(model, (x,), ["mediatek", "cpu"], quantize="int8", calibration=calibration_for((x,)),
                              keep_reference=True, registry=registry_for(MediatekBackend(), CpuBackend()))
    report = program.manifest.report["forward"]["quantization"]["backends"]
    # cpu's partition reads a float value (mediatek's output), and XNNPACK runs a relu alone
    # only in float: its quantizer annotated it, its artifact runs the three ops in float
    assert report == {"mediatek": "quantizes its 2 op(s) with int8",
                      "cpu": "quantizes none of its 3 op(s) with int8; 3 stay float: relu (XNNPACK runs it in float only), "
                             "view (its compiled artifact computes it in float), view_1 (its compiled artifact computes "
                             "it in float)"}
    nodes = program.report()["nodes"]
    assert {n["backend"] for n in nodes if n["op"] == "aten.convolution.default"} == {"mediatek"}
    assert {n["backend"] for n in nodes if n["op"] == "aten.relu.default"} == {"cpu"}
    artifacts = {path: info for path, info in program.manifest.artifacts.items()}
    mediatek = [info.metadata for info in artifacts.values() if info.backend == "mediatek"]
    assert [m["ops"]["CONV_2D"] for m in mediatek] == [1, 1]
    assert all(m["apu_precision"].startswith("INT8 as written") for m in mediatek)
    assert all(written.quantized_types(data) == ["INT8"] for data in _artifacts(program))
    torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=1e-6)
    labels = program.runtime().step_labels("forward")
    assert labels[0] == ("mediatek: reference (CPU)" if apu_missing() else "mediatek")


def test_a16w8_alone_is_refused_with_the_reason():
    """It exported every node to portable torch, a float program, with exit 0."""
    model, x = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval(), torch.randn(1, 3, 6, 6)
    with pytest.raises(edgeport.QuantizationError) as info:
        edgeport.export(model, (x,), ["mediatek"], quantize="a16w8", calibration=calibration_for((x,)),
                        registry=registry_for(MediatekBackend()))
    assert str(info.value) == (f"no selected backend quantizes with a16w8: mediatek offers int8 (a16w8: "
                               f"{neuropilot.SCHEMES_DECLINED['a16w8']})")


def test_fp16_weights_decline_int8():
    """fp16-stored weights and integer weights do not mix: with fp16=True mediatek has no int8 quantizer."""
    torch.manual_seed(0)
    model, x = nn.Conv2d(3, 8, 3).eval(), torch.randn(1, 3, 6, 6)
    program = edgeport.export(model, (x,), ["mediatek", "cpu"], quantize="int8", calibration=calibration_for((x,)),
                              options={"mediatek": {"fp16": True}}, registry=registry_for(MediatekBackend(), CpuBackend()))
    report = program.manifest.report["forward"]["quantization"]["backends"]
    assert report["mediatek"] == "declines: mediatek has no int8 quantizer for these options"
    assert {n["backend"] for n in program.report()["nodes"] if n["op"] == "aten.convolution.default"} == {"cpu"}


@pytest.mark.slow
def test_the_readme_mobilenet_int8_export_for_mediatek_runs(tmp_path, monkeypatch):
    """The README's command, as written there, from the repository root."""
    (line,) = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()
               if line.strip().startswith("edgeport export") and "--backend mediatek --quantize int8" in line]
    args = shlex.split(line)[1:]
    out = tmp_path / "k8.edgeport"
    args[args.index("-o") + 1] = str(out)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "mediatek: quantizes its" in result.output
    program = edgeport.load(out, registry=registry_for(MediatekBackend()))
    assert {n["backend"] for n in program.report()["nodes"]} == {"mediatek"}
    (info,) = program.manifest.artifacts.values()
    assert info.metadata["ops"]["QUANTIZE"] == 1 and info.metadata["ops"]["DEQUANTIZE"] == 1
    assert written.refusals(program.files[next(iter(program.manifest.artifacts))]) == []
    assert program(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


class Scores(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.bmm(torch.relu(q) + q, k)


def _round_half_away(num: np.ndarray, den: int) -> np.ndarray:
    return np.sign(num) * ((np.abs(num) + den // 2) // den)


def test_tflites_int8_batch_matmul_requantizes_within_one_accumulator_unit():
    """The premise of `Backend.accumulator_error` = 1 (core/devtools/rounding.py): on the
    CPU reference TFLite's own int8 BATCH_MATMUL requantizes its int32 accumulator in
    gemmlowp's fixed point, rounding twice, which this reproduces exactly. So a few
    outputs leave the exact value's rounding, each within one accumulator unit of a tie."""
    from ai_edge_litert.interpreter import Interpreter

    flips = 0
    for seed in range(4):
        torch.manual_seed(seed)
        inputs = (torch.randn(2, 17, 16), torch.randn(2, 16, 17))
        program = edgeport.export(Scores(), inputs, ["mediatek"], quantize="int8", calibration=calibration_for(inputs),
                                  registry=registry_for(MediatekBackend()))
        [data] = _artifacts(program)
        interpreter = Interpreter(model_content=bytes(data), experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
        for detail, x in zip(interpreter.get_input_details(), inputs):
            interpreter.set_tensor(detail["index"], x.numpy())
        interpreter.invoke()
        tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
        [op] = [op for op in interpreter._get_ops_details() if op["op_name"] == "BATCH_MATMUL"]
        (a, b), out = op["inputs"][:2], op["outputs"][0]
        (sa, za), (sb, zb), (so, zo) = (tensors[i]["quantization"] for i in (a, b, out))
        accumulator = np.matmul(*(interpreter.get_tensor(i).astype(np.int64) - z for i, z in ((a, za), (b, zb))))
        m = np.float64(sa) * np.float64(sb) / np.float64(so)
        fraction, exponent = np.frexp(m)
        product = _round_half_away(accumulator * np.int64(np.round(fraction * 2**31)), 2**31)  # the first rounding
        fixed_point = np.clip(_round_half_away(product, 2 ** int(-exponent)) + zo, -128, 127)
        written = interpreter.get_tensor(out).astype(np.int64)
        assert np.array_equal(written, fixed_point)
        exact = accumulator * m
        off = written != np.clip(np.round(exact) + zo, -128, 127)
        assert np.all(np.abs(np.abs(exact[off] - np.floor(exact[off])) - 0.5) <= m)  # within a unit of a tie
        flips += int(off.sum())
    assert flips > 0  # the kernel is not exact: check needs the allowance


def _causal(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Falcon's attention: one key/value head for every query head, a causal bool mask
    computed from positions (known at export)."""
    positions = torch.arange(q.shape[-2])
    keep = (positions[None, :] <= positions[:, None]).view(1, 1, q.shape[-2], q.shape[-2])
    return torch.nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=keep)


def _batch_matmul_types(program: edgeport.Program) -> list[set[str]]:
    return [{t.type for t in op.tensors} for data in _artifacts(program) for op in written.read_ops(data)
            if op.op == "BATCH_MATMUL"]


@pytest.mark.parametrize("attention, kv_heads", [
    (_causal, 1),
    (lambda q, kv: torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True), 4),
], ids=["multi_query_bool_mask", "is_causal"])
def test_a_causal_attention_kept_whole_is_int8_products_around_a_float_mask_and_softmax(attention, kv_heads):
    """A masked attention kept whole was float in the int8 graph, named only as "no int8
    form here". Its mask, known at export, is added as a stored -inf before the softmax:
    the products are int8, the mask's add and the softmax float (the -inf cannot be int8)."""
    from edgeport.testing.quantized_cases import qop, run_quantized_case

    case = qop("int8_causal_attention", lambda m, q, kv: attention(q, kv), (1, 4, 6, 8), (1, kv_heads, 6, 8))
    result = run_quantized_case(MediatekBackend(), case)
    assert result.passed and result.delegated == 1.0, (result.error, result.max_steps)
    assert _batch_matmul_types(result.program) == [{"INT8"}, {"INT8"}]
    nodes = {n["op"]: n for n in result.program.report()["nodes"]}
    assert nodes["aten.matmul.default"]["quantized"] == {"activations": "int8"}
    assert all(nodes[op].get("float_between_quantized") for op in ("aten.add.Tensor", "aten._softmax.default"))
    line = result.program.manifest.report["forward"]["quantization"]["backends"]["mediatek"]
    # the add and softmax the quantizer inserted are renamed when the graph is captured
    # again: each was counted twice, under both names ("5 stay float" of 3)
    quantized, ops, kept_float = map(int, re.match(r"quantizes (\d+) of its (\d+) op\(s\) with int8, but (\d+) stay "
                                                   r"float", line).groups())
    assert quantized + kept_float == ops, line
    assert f"{nodes['aten.add.Tensor']['name']} (it reads attention_mask_0, which holds an infinity" in line, line
    assert all(written.refusals(data) == [] for data in _artifacts(result.program))
    module, inputs = case.build()
    with torch.no_grad():  # 33.4 and 22.0 dB; the same attention unmasked is -0.2 and 3.9 dB from eager's
        assert sqnr_db([result.program(*inputs)], [module(*inputs)]) > 20


def test_an_attention_left_whole_in_int8_says_why():
    """A mask computed at run time: the attention stays whole and float, and the summary says why."""
    module = nn.Module()
    module.forward = lambda q, keep: torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=keep)
    q, keep = torch.randn(1, 2, 5, 8), torch.ones(5, 5, dtype=torch.bool).tril()
    program = edgeport.export(module, (q, keep), ["mediatek"], quantize="int8", calibration=calibration_for((q, keep)),
                              registry=registry_for(MediatekBackend()))
    line = program.manifest.report["forward"]["quantization"]["backends"]["mediatek"]
    assert "scaled_dot_product_attention (attention with a mask computed at run time stays whole" in line, line


class EvenAndOdd(nn.Module):
    """An int8 linear's output sliced twice, one slice with a step (STRIDED_SLICE), each
    read by an int8 linear."""

    def __init__(self) -> None:
        super().__init__()
        self.into, self.even, self.odd = nn.Linear(64, 64), nn.Linear(32, 16), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.into(x)
        return self.even(y[..., ::2]) + self.odd(y[..., 32:])


def test_slices_between_int8_ops_are_int8_slices_neuropilot_takes():
    """The plugin legalizes SLICE and STRIDED_SLICE (neuropilot.LEGALIZED_OPS) on int8
    tensors per tensor. Without an int8 form each slice ran float between a DEQUANTIZE
    and a QUANTIZE (3 QUANTIZEs and 2 DEQUANTIZEs); now only the input and output convert."""
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64)
    program = edgeport.export(EvenAndOdd().eval(), (x,), ["mediatek"], quantize="int8",
                              calibration=calibration_for((x,)), keep_reference=True,
                              registry=registry_for(MediatekBackend()))
    [data] = _artifacts(program)
    ops = {op.op: op for op in written.read_ops(data)}
    counts = program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]
    assert counts["QUANTIZE"] == 1 and counts["DEQUANTIZE"] == 1, counts
    assert [ops[name].tensors[-1].type for name in ("SLICE", "STRIDED_SLICE")] == ["INT8", "INT8"]  # outputs
    assert written.refusals(data) == [] and written.quantized_types(data) == ["INT8"]
    with torch.no_grad():
        torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=0)
