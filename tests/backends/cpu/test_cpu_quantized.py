"""The cpu backend quantized: the writer's int8 ops and integer-weight linears against
their fake-quantized reference, what XNNPACK really runs, and the artifacts' form
(quantize/dequantize only at partition boundaries; names and signature LiteRT's tools
accept)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from click.testing import CliRunner
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.tflite import TfliteExecutable, runner, undelegated_ops
from edgeport.cli import cli
from edgeport.testing import QUANTIZED_CASES, registry_for, run_quantized_conformance
from edgeport.devtools.quant_check import sqnr_db
from edgeport.testing.quantized_cases import calibration_for, reference_program

# Standalone int8 ops LiteRT 2.3's XNNPACK delegate leaves to TFLite's int8 kernels
# (xnnpack_delegate.cc checks float tensors for them; fused into a conv, FC or add,
# RELU/RELU6 run in XNNPACK). The cpu keeps them float, inside the delegate.
NOT_DELEGATED_IN_INT8 = {"RELU", "RELU6", "HARD_SWISH", "SOFTMAX", "AVERAGE_POOL_2D", "GELU", "BATCH_MATMUL"}
# A view between ops that stay float stays float too (in int8 it would only add a
# QUANTIZE and a DEQUANTIZE): the reshape and the permute after a standalone relu, the
# views of a matmul's inputs before its float bmm.
KEPT_FLOAT_ON_CPU = {"int8_relu", "int8_relu6", "int8_hardswish", "int8_softmax", "int8_avg_pool2d", "int8_gelu",
                     "int8_bmm", "int8_attention", "int8_reshape", "int8_permute", "int8_matmul"}


class CpuEveryInt8(CpuBackend):
    """The cpu writer with every int8 form annotated and written, as an NPU backend
    sharing the writer would: exercises the int8 forms the cpu itself leaves float."""

    xnnpack_int8_only = False


def tflite_artifacts(program: edgeport.Program) -> list[bytes]:
    return [data for path, data in program.files.items() if path.endswith(".tflite")]


def undelegated(program: edgeport.Program) -> set[str]:
    return {op.split(":", 1)[1] for data in tflite_artifacts(program)
            for op in undelegated_ops(TfliteExecutable(data, 1).interpreter)}


@pytest.fixture(scope="module")
def conformance():
    return {r.name: r for r in run_quantized_conformance(CpuBackend())}


@pytest.mark.slow
def test_every_quantized_case_matches_its_reference(conformance):
    assert len(conformance) == len(QUANTIZED_CASES)
    failed = {name: (r.error, r.max_steps, r.max_error) for name, r in conformance.items() if not r.passed}
    assert failed == {}
    assert {name: r.delegated for name, r in conformance.items() if r.delegated < 1.0} == {}
    # single ops land within one output quantization step of the reference (most exactly)
    steps = {name: r.max_steps for name, r in conformance.items() if r.max_steps is not None}
    print("\nint8 cases, |cpu - reference| in output steps:", steps)
    int8 = {c.name for c in QUANTIZED_CASES if c.scheme == "int8"}
    assert set(steps) == int8 - KEPT_FLOAT_ON_CPU


@pytest.mark.slow
def test_quantize_and_dequantize_only_at_partition_boundaries(conformance):
    for case in QUANTIZED_CASES:
        if case.scheme != "int8" or case.name in KEPT_FLOAT_ON_CPU:
            continue
        module, inputs = case.build()
        ops = conformance[case.name].ops
        assert ops.get("QUANTIZE") == len(inputs), (case.name, ops)
        assert ops.get("DEQUANTIZE") == 1, (case.name, ops)
        assert not {"CAST"} & set(ops), (case.name, ops)


@pytest.mark.slow
def test_xnnpack_runs_everything_the_cpu_writes(conformance):
    assert {name: undelegated(r.program) for name, r in conformance.items() if undelegated(r.program)} == {}
    # what it would not take in int8 the cpu keeps float: no quantize around it at all
    assert all("QUANTIZE" not in conformance[name].ops for name in KEPT_FLOAT_ON_CPU)


@pytest.mark.slow
def test_the_int8_forms_the_cpu_keeps_float_are_right_for_a_backend_that_wants_them():
    cases = [c for c in QUANTIZED_CASES if c.name in KEPT_FLOAT_ON_CPU]
    results = run_quantized_conformance(CpuEveryInt8(), cases)
    assert {r.name: (r.error, r.max_steps) for r in results if not r.passed} == {}
    inputs = {c.name: len(c.build()[1]) for c in cases}
    assert all(r.ops["QUANTIZE"] == inputs[r.name] and r.ops["DEQUANTIZE"] == 1 for r in results)
    assert set().union(*(undelegated(r.program) for r in results)) == NOT_DELEGATED_IN_INT8


@pytest.mark.slow
def test_integer_weight_linears_match_their_reference_exactly(conformance):
    dynamic = {name: r.max_error for name, r in conformance.items() if r.scheme != "int8"}
    assert set(dynamic) == {"int8_dynamic_linear", "int8_dynamic_mlp", "int4_weight_linear", "int4_weight_mlp"}
    assert all(err < 1e-5 for err in dynamic.values()), dynamic


def _weight_tensors(data: bytes) -> dict[str, tuple[str, int]]:
    """Constant tensors by name: (TensorType name, bytes)."""
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    out = {}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        size = model.Buffers(t.Buffer()).DataLength() if t.Buffer() else 0
        if size:
            out[t.Name().decode()] = (types[t.Type()], size)
    return out


@pytest.mark.parametrize("scheme, weight_type, bytes_per_weight", [("int8-dynamic", "INT8", 1.0),
                                                                   ("int4-weight", "INT4", 0.5)])
def test_integer_weight_linear_is_a_fully_connected_xnnpack_runs(scheme, weight_type, bytes_per_weight):
    torch.manual_seed(0)
    model = nn.Linear(576, 1536).eval()
    x = torch.randn(1, 576)
    program = edgeport.export(model, (x,), ["cpu"], quantize=scheme, registry=registry_for(CpuBackend()))
    (data,) = tflite_artifacts(program)
    assert program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"] == {"FULLY_CONNECTED": 1}
    weight = _weight_tensors(data)["linear/weight"]
    assert weight == (weight_type, int(576 * 1536 * bytes_per_weight))
    assert undelegated_ops(TfliteExecutable(data, 1).interpreter) == []  # qd8-f32-qc8w / qd8-f32-qb4w


class Conv1DMlp(nn.Module):
    """GPT-2's MLP: its Conv1D linears are ``addmm(bias, x, w)`` with w (in, out); the
    second a bare ``mm`` here."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.up_w, self.up_b = nn.Parameter(torch.randn(width, 4 * width) * 0.2), nn.Parameter(torch.randn(4 * width))
        self.down_w = nn.Parameter(torch.randn(4 * width, width) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(F.gelu(torch.addmm(self.up_b, x, self.up_w)), self.down_w)


@pytest.mark.parametrize("scheme", ["int8", "int8-dynamic", "int4-weight"])
def test_conv1d_products_are_quantized_as_linears(scheme):
    """Only a linear had int8 and per-token forms: GPT-2's addmm and mm stayed float,
    and int8-dynamic and int4-weight quantized nothing of GPT-2 (the tflite quantizer's
    `product_as_linear`)."""
    torch.manual_seed(0)
    model, x = Conv1DMlp().eval(), torch.randn(8, 64)
    program = edgeport.export(model, (x,), ["cpu"], quantize=scheme, calibration=calibration_for((x,)),
                              keep_reference=True, registry=registry_for(CpuBackend()))
    linears = [n for n in program.report()["nodes"] if n["op"] == "aten.linear.default"]
    assert len(linears) == 2 and all("quantized" in n for n in linears)
    summary = program.manifest.report["forward"]["quantization"]["backends"]["cpu"]
    assert "addmm" not in summary and " mm" not in summary, summary
    (data,) = tflite_artifacts(program)
    assert program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]["FULLY_CONNECTED"] == 2
    with torch.no_grad():
        got = program(x)
        assert torch.allclose(got, reference_program(program)(x), atol=1e-4 * got.abs().max())
        assert sqnr_db([got], [model(x)]) > {"int8": 30, "int8-dynamic": 35, "int4-weight": 15}[scheme]


class TransposedWeightLinear(nn.Module):
    """Falcon's linear (`FalconLinear`): ``x @ W.T``, W stored (out, in), no bias."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width // 2, width) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


@pytest.mark.parametrize("scheme", ["int8", "int8-dynamic", "int4-weight"])
def test_a_product_with_a_transposed_stored_weight_is_quantized_as_a_linear(scheme):
    """Captured as ``mm(x, permute(W, [1, 0]))``: the weight is no stored matrix but its
    transpose, so `product_as_linear` left it, and every linear of a Falcon stayed float
    ("no int8 form here"). It is ``linear(x, W)``, reading W itself."""
    torch.manual_seed(0)
    model, x = TransposedWeightLinear().eval(), torch.randn(8, 64)
    program = edgeport.export(model, (x,), ["cpu"], quantize=scheme, calibration=calibration_for((x,)),
                              keep_reference=True, registry=registry_for(CpuBackend()))
    (linear,) = [n for n in program.report()["nodes"] if n["op"] == "aten.linear.default"]
    assert "quantized" in linear
    assert program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]["FULLY_CONNECTED"] == 1
    with torch.no_grad():
        got = program(x)
        assert torch.allclose(got, reference_program(program)(x), atol=1e-4 * got.abs().max())
        assert sqnr_db([got], [model(x)]) > {"int8": 30, "int8-dynamic": 35, "int4-weight": 15}[scheme]


@pytest.mark.parametrize("kernel, stride, padding, groups", [(3, 1, 1, 1), (3, 2, 1, 1), (10, 5, 0, 1), (3, 1, 1, 16)])
def test_a_conv1d_runs_in_int8_as_the_reference_computes(kernel, stride, padding, groups):
    """An int8 conv1d was refused ("a non-4d input") and ran float between a dequantize
    and a quantize: every convolution of Whisper's and wav2vec2's audio front ends. It
    runs as the int8 conv2d over (1, W) the float form is written as."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(16, 32, kernel, stride=stride, padding=padding, groups=groups), nn.GELU(),
                          nn.Conv1d(32, 32, 3, stride=2, padding=1)).eval()
    x = torch.randn(1, 16, 40)
    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=[(x,), *calibration_for((x,))],
                              keep_reference=True, registry=registry_for(CpuBackend()))
    convolutions = [n for n in program.report()["nodes"] if n["op"] == "aten.convolution.default"]
    assert len(convolutions) == 2 and all("quantized" in n for n in convolutions)
    (data,) = tflite_artifacts(program)
    assert undelegated_ops(TfliteExecutable(data, 1).interpreter) == []
    with torch.no_grad():
        got = program(x)
        assert torch.allclose(got, reference_program(program)(x), atol=1e-5)
        assert sqnr_db([got], [model(x)]) > 30


def test_loading_int4_weights_refuses_when_xnnpack_does_not_take_them(monkeypatch):
    """TFLite's own FULLY_CONNECTED ignores block scales (garbage out): never run it."""
    torch.manual_seed(0)
    model = nn.Linear(64, 32).eval()
    x = torch.randn(2, 64)
    registry = registry_for(CpuBackend())
    program = edgeport.export(model, (x,), ["cpu"], quantize="int4-weight", registry=registry)
    (data,) = tflite_artifacts(program)
    assert program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["int4_weights"] == 1
    no_delegate = functools.partial(Interpreter, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    monkeypatch.setattr(runner, "_interpreter_class", lambda: no_delegate)
    with pytest.raises(edgeport.BackendError, match="left 0:FULLY_CONNECTED to TFLite's kernels"):
        program(x)
    TfliteExecutable(data, 1)  # a caller that does not ask for the delegate gets the interpreter


class ThreeInt4Linears(nn.Module):
    """Two linears of one form and one of another: a probe holds one of each form."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 96)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


@pytest.fixture(scope="module")
def int4_model() -> bytes:
    torch.manual_seed(0)
    program = edgeport.export(ThreeInt4Linears().eval(), (torch.randn(2, 64),), ["cpu"], quantize="int4-weight",
                              registry=registry_for(CpuBackend()))
    (data,) = tflite_artifacts(program)
    return data


def test_the_int4_probe_holds_one_operator_of_each_form_and_passes_where_the_model_is_delegated(int4_model):
    from edgeport.backends.tflite.int4_probe import check_delegated, probe_model

    assert undelegated_ops(TfliteExecutable(int4_model, 1).interpreter) == []
    probe = probe_model(memoryview(int4_model))
    graph = schema.Model.GetRootAs(probe, 0).Subgraphs(0)
    shapes = sorted(tuple(graph.Tensors(graph.Operators(i).Inputs(1)).ShapeAsNumpy()) for i in range(graph.OperatorsLength()))
    assert shapes == [(64, 64), (96, 64)]
    assert len(probe) < len(int4_model)
    check_delegated(memoryview(int4_model), 1)
    assert probe_model(tflite_artifacts(edgeport.export(nn.Linear(8, 4).eval(), (torch.randn(1, 8),), ["cpu"],
                                                        registry=registry_for(CpuBackend())))[0]) is None  # fp32


def test_the_int4_probe_refuses_when_xnnpack_does_not_take_the_form(int4_model, monkeypatch):
    from edgeport.backends.tflite.int4_probe import check_delegated

    no_delegate = functools.partial(Interpreter, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    monkeypatch.setattr(runner, "_interpreter_class", lambda: no_delegate)
    with pytest.raises(edgeport.BackendError, match="does not take 2 of this model's forms of FULLY_CONNECTED"):
        check_delegated(int4_model, 1)


def test_fp32_artifacts_have_unique_tensor_names_and_a_serving_signature():
    """ai-edge-quantizer (and LiteRT's signature runner) key tensors by name and want
    `serving_default`: two padded convs used to write two tensors named "paddings"."""

    class TwoPads(nn.Module):
        def forward(self, x):
            return F.pad(F.pad(x, (1, 1)), (2, 2), value=1.0)

    x = torch.randn(1, 3, 8)
    program = edgeport.export(TwoPads(), (x,), ["cpu"], registry=registry_for(CpuBackend()))
    (data,) = tflite_artifacts(program)
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    names = [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]
    assert len(names) == len(set(names)), names
    interpreter = Interpreter(model_content=data)
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["constant_pad_nd_1"]}}
    out = interpreter.get_signature_runner("serving_default")(x=x.numpy())["constant_pad_nd_1"]
    torch.testing.assert_close(torch.from_numpy(out), TwoPads()(x))


@pytest.mark.slow
def test_mobilenet_v2_int8_is_one_xnnpack_partition_at_under_a_third_of_the_size():
    from example_models import load_example

    model, inputs = load_example("mobilenet_v2")
    registry = registry_for(CpuBackend())
    calibration = calibration_for(inputs, batches=2)
    program = edgeport.export(model, inputs, ["cpu"], quantize="int8", calibration=calibration, keep_reference=True,
                              registry=registry)
    fp32 = edgeport.export(model, inputs, ["cpu"], registry=registry)
    (data,) = tflite_artifacts(program)
    ops = program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1
    assert undelegated_ops(TfliteExecutable(data, 1).interpreter) == []
    (fp32_data,) = tflite_artifacts(fp32)
    assert len(data) < 0.3 * len(fp32_data)
    with torch.no_grad():
        actual, expected = program(*inputs), reference_program(program)(*inputs)
    scale = float((expected - actual).abs().max()) / float(expected.abs().max())
    print(f"\nMobileNetV2 int8: max abs(cpu - reference) / max abs(reference) = {scale:.4f}")
    assert scale < 0.02, scale  # 60 int8 layers, each within a step of the reference


def _linear_with_row(row: torch.Tensor, bias: float) -> nn.Linear:
    torch.manual_seed(0)
    module = nn.Linear(8, 4).eval()
    with torch.no_grad():
        module.weight[0], module.bias[0] = row, bias
    return module


def _int8_and_reference(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    calibration = [(x * (1 + i / 8),) for i in range(8)]
    program = edgeport.export(module, (x,), ["cpu"], quantize="int8", calibration=calibration, keep_reference=True,
                              registry=registry_for(CpuBackend()))
    with torch.no_grad():
        return program(x), reference_program(program)(x)


def test_the_reference_rounds_the_bias_as_the_int32_the_kernel_adds():
    """Row 0 holds one weight of 1000 over inputs of span ~200: its bias step is ~6.6,
    so the bias of 3.0 runs as 0. The reference kept 3.0, and check blamed XNNPACK."""
    row = torch.zeros(8)
    row[0] = 1000.0
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)) * 30
    x[:, 0] *= 1e-4  # row 0 sees ~0: its output is its bias
    got, reference = _int8_and_reference(_linear_with_row(row, 3.0), x)
    assert torch.equal(got, reference)
    assert got[:, 0].abs().max() < 1.0  # the int32 bias, not 3.0


def test_a_large_bias_next_to_zero_weights_fits_int32():
    """Input and weight scales at their floor (2^-12 each) make a bias step of 2^-24:
    int32 holds at most 128 there, and a bias of 1000 was clipped to 128."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)) * 1e-3
    module = _linear_with_row(torch.zeros(8), 1000.0)
    got, reference = _int8_and_reference(module, x)
    with torch.no_grad():
        expected = module(x)
    assert torch.equal(got, reference)
    assert (got[:, 0] - expected[:, 0]).abs().max() < 8  # one output step (span ~1000 / 255)


@pytest.mark.parametrize("middle", [nn.Hardswish(), nn.Sequential(nn.MaxPool2d(2), nn.ReLU())],
                         ids=["hardswish", "maxpool_relu"])
def test_an_op_xnnpack_runs_only_in_float_stays_float_between_int8_convs(middle):
    """The quantizer left it float, but the convs' quantize and dequantize around it made
    the writer pick its int8 form: a standalone int8 HARD_SWISH (or RELU) that XNNPACK
    does not run, splitting the delegate."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), middle, nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    program = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=calibration_for((x,)),
                              keep_reference=True, registry=registry_for(CpuBackend()))
    assert undelegated(program) == set()
    with torch.no_grad():
        torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=0)


class _NormViewNorm(nn.Module):
    """Two layer norms (float: no int8 form) with a reshape and a permute between them."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.LayerNorm(64), nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return self.second(self.first(x).reshape(B, T, 4, 16).permute(0, 2, 1, 3))


class _Attention(nn.Module):
    """A transformer's attention: q/k/v views between an int8 linear's float split and
    the float attention, its output's views between the attention and an int8 linear."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=-1))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))


def _int8_program(model: nn.Module, x: torch.Tensor) -> edgeport.Program:
    torch.manual_seed(0)
    return edgeport.export(model.eval(), (x,), ["cpu"], quantize="int8", calibration=calibration_for((x,)),
                           keep_reference=True, registry=registry_for(CpuBackend()))


def _output_types(data: bytes) -> dict[str, list[str]]:
    """Operator name -> the TensorType of each such operator's output, in order."""
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    out: dict[str, list[str]] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = names[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()]
        out.setdefault(name, []).append(types[graph.Tensors(op.Outputs(0)).Type()])
    return out


def test_a_view_between_ops_that_stay_float_stays_float():
    """Annotated int8 as any op, the reshape between the layer norms was written as a
    QUANTIZE, an int8 RESHAPE and a DEQUANTIZE: two operators and a rounding for nothing."""
    torch.manual_seed(0)
    program = _int8_program(_NormViewNorm(), torch.randn(1, 32, 64))
    ops = program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops, ops
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    assert "quantized" not in nodes["view"] and "quantized" not in nodes["permute"]


def test_attention_views_are_int8_only_next_to_an_int8_linear():
    """The q/k/v views sit between the split (float) and the attention (float on the cpu):
    each was a QUANTIZE, an int8 RESHAPE and a DEQUANTIZE (5 of each in all, 2 now: the
    input and output, the float attention's output into the int8 out-projection). The
    views after the attention carry the out-projection's int8 input, and stay int8."""
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64)
    program = _int8_program(_Attention(), x)
    (data,) = tflite_artifacts(program)
    ops = program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]
    assert ops["QUANTIZE"] == 2 and ops["DEQUANTIZE"] == 2, ops
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    labels = [nodes[f"view{i}"].get("quantized") for i in ("", "_1", "_2", "_3")]
    assert labels == [None, None, None, {"activations": "int8"}]
    assert _output_types(data)["RESHAPE"] == ["FLOAT32"] * 3 + ["INT8"]  # q, k, v; the out-projection's input
    assert undelegated_ops(TfliteExecutable(data, 1).interpreter) == []
    with torch.no_grad():
        torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=1e-5)


class _LinearPermuteSoftmax(nn.Module):
    """An int8 linear's heads permuted for a softmax the cpu runs in float."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return torch.softmax(self.fc(x).view(B, T, 4, 16).permute(0, 2, 3, 1), dim=-1)


def test_a_permute_read_as_float_is_reported_float(tmp_path):
    """The permute carries the linear's int8 values, but writes no operator: the softmax
    reads it after a DEQUANTIZE and writes the TRANSPOSE, in float. Explain called the
    permute int8; the reshape before it writes an int8 RESHAPE, and is int8."""
    torch.manual_seed(0)
    program = _int8_program(_LinearPermuteSoftmax(), torch.randn(1, 32, 64))
    (data,) = tflite_artifacts(program)
    written = _output_types(data)
    assert written["RESHAPE"] == ["INT8"] and written["TRANSPOSE"] == ["FLOAT32"], written
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    assert nodes["permute"].get("float_between_quantized") is True and "quantized" not in nodes["permute"]
    assert nodes["view"]["quantized"] == {"activations": "int8"}
    program.save(tmp_path / "q.edgeport")
    table = CliRunner().invoke(cli, ["explain", str(tmp_path / "q.edgeport")], terminal_width=250)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "aten.permute" in line)
    assert "float" in row and "int8" not in row, row


def test_an_attention_the_cpu_keeps_whole_in_int8_says_why():
    """It said "no int8 form here", though the mediatek writes its pieces in int8."""
    module = nn.Module()
    module.forward = lambda q: F.scaled_dot_product_attention(q, q, q)
    q = torch.randn(1, 2, 5, 8)
    program = edgeport.export(module, (q,), ["cpu"], quantize="int8", calibration=calibration_for((q,)),
                              registry=registry_for(CpuBackend()))
    line = program.manifest.report["forward"]["quantization"]["backends"]["cpu"]
    assert "scaled_dot_product_attention (attention stays whole: XNNPACK runs neither an int8 BATCH_MATMUL" in line, line


class _Halves(nn.Module):
    """A rotary embedding's shape of data movement: an int8 linear's output sliced in
    halves, each read by an int8 linear."""

    def __init__(self) -> None:
        super().__init__()
        self.into, self.first, self.second = nn.Linear(64, 64), nn.Linear(32, 16), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.into(x)
        return self.first(y[..., :32]) + self.second(y[..., 32:])


def test_a_slice_between_int8_ops_is_an_int8_slice_xnnpack_runs():
    """Without an int8 form each half was a DEQUANTIZE, a float SLICE and a QUANTIZE
    (3 QUANTIZEs and 2 DEQUANTIZEs in all); now only the input and the output convert,
    and XNNPACK runs the int8 SLICEs (a loaded model leaves nothing to TFLite)."""
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64)
    program = _int8_program(_Halves(), x)
    (data,) = tflite_artifacts(program)
    ops = program.manifest.artifacts["artifacts/forward/0.tflite"].metadata["ops"]
    assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 1, ops
    assert _output_types(data)["SLICE"] == ["INT8", "INT8"]
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    assert nodes["slice_1"]["quantized"] == {"activations": "int8"}
    assert undelegated_ops(TfliteExecutable(data, 1).interpreter) == []
    with torch.no_grad():
        torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=0)


class _Rotary(nn.Module):
    """A rotary embedding on an int8 linear's output: q * cos + cat(-q2, q1) * sin."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.out = nn.Linear(64, 64), nn.Linear(64, 64)
        angles = torch.arange(32)[:, None] / 10.0 ** (torch.arange(32) / 32)
        self.register_buffer("cos", torch.cat([angles.cos()] * 2, -1))
        self.register_buffer("sin", torch.cat([angles.sin()] * 2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x)
        rotated = torch.cat([-q[..., 32:], q[..., :32]], dim=-1)
        return self.out(q * self.cos + rotated * self.sin)


def test_a_slice_a_concatenation_or_only_float_ops_read_stays_float():
    """In int8 the first half's slice shared the query's parameters and, through the
    concatenation, joined them to the negated half's: the zoo's Llama fell from 28.0 dB
    to 25.4 against float. The second half's slice, read by a float neg, needed a
    DEQUANTIZE of its own where float it reads the query's (4 more in the Llama)."""
    torch.manual_seed(0)
    x = torch.randn(1, 32, 64)
    program = _int8_program(_Rotary(), x)
    nodes = {n["name"]: n for n in program.report()["nodes"]}
    assert "quantized" not in nodes["slice_1"] and "quantized" not in nodes["slice_2"]
    assert "quantized" in nodes["cat"] and "quantized" in nodes["linear"]
    with torch.no_grad():
        torch.testing.assert_close(program(x), reference_program(program)(x), rtol=0, atol=1e-5)
