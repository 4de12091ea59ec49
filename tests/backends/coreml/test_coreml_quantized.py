"""The coreml backend quantized: weights compressed by coremltools (int8 through
linear_quantize_weights, palettize4/6 through palettize_weights) and per-block int4 by
edgeport's pass (int4_blocks.py, numerics in test_coreml_int4_blocks.py), int8
activations as MIL quantize/dequantize with the calibrated scales, and the quantized
conformance cases as far as Linux goes.

Core ML runs only on macOS: here each model is compiled, read back, validated by
coremltools, and its compressed weights' storage types and sizes are checked in the
spec; running is macOS's (`coreml_helpers.macos_only`).
"""

from __future__ import annotations

import pytest

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import edgeport  # noqa: E402
from coreml_helpers import ON_MACOS, macos_only  # noqa: E402
from edgeport.backends.coreml import CoreMLBackend, compress, package  # noqa: E402
from edgeport.portable import stored_program  # noqa: E402
from edgeport.testing import QUANTIZED_CASES, reference_program, registry_for, run_quantized_conformance  # noqa: E402
from edgeport.testing.quantized_cases import calibration_for  # noqa: E402

IOS18 = {"minimum_deployment_target": "iOS18"}
# What each scheme stores a weight as: the constexpr op, the stored dtype, and bits per weight.
STORED = {
    "int8": ("constexpr_affine_dequantize", "int8", 8),
    "int4-weight": ("constexpr_blockwise_shift_scale", "uint4", 4),  # edgeport's blocks: int4_blocks.py
    "palettize4": ("constexpr_lut_to_dense", "uint8", 4),  # iOS17 form: indices packed into bytes
    "palettize6": ("constexpr_lut_to_dense", "uint8", 6),
}
# Cases coreml does not take whole, and why (coremltools 9.0's limits, as in float).
PARTLY = {
    "int8_relu6": "cannot convert hardtanh with integer bounds",
    "int8_conv2d_depthwise": "cannot convert hardtanh with integer bounds",
    "int8_max_pool2d": "coremltools could not convert aten.max_pool2d_with_indices.default",
    "int8_classifier": "coremltools could not convert aten.max_pool2d_with_indices.default",
}
# int8 cases whose op linear_quantize_activations quantizes around (conv, linear, add, avg_pool).
ACTIVATIONS_QUANTIZED = {"int8_conv2d", "int8_conv2d_relu", "int8_conv2d_stride2", "int8_conv2d_depthwise",
                         "int8_linear", "int8_linear_relu", "int8_add", "int8_add_relu", "int8_avg_pool2d",
                         "int8_conv_bn_relu6", "int8_inverted_residual", "int8_classifier"}


class ConvLinear(nn.Module):
    """Weights big enough to compress (more than coremltools' 2,048-element threshold)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 64, 3, padding=1)  # 18,432 weights
        self.fc = nn.Linear(64 * 6 * 6, 128)  # 294,912 weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(torch.flatten(y + y, 1))


WEIGHTS = 18_432 + 294_912


def _export(scheme: str | None, options: dict | None = None) -> edgeport.Program:
    torch.manual_seed(0)
    model, x = ConvLinear().eval(), torch.randn(1, 32, 6, 6)
    return edgeport.export(model, (x,), ["coreml"], quantize=scheme, calibration=calibration_for((x,)),
                           options={"coreml": options} if options else None, keep_reference=True, strict=True,
                           registry=registry_for(CoreMLBackend()))


def _read(program: edgeport.Program) -> tuple[list[compress.CompressedWeight], int, object]:
    """(compressed weights, bytes of the weight file, the validated MIL program) of its one artifact."""
    (path,) = program.manifest.artifacts
    with package.opened(program.files[path]) as pkg:
        mil = package.validate(pkg)
        size = sum(f.stat().st_size for f in pkg.rglob("weight.bin"))
    return compress.compressed_weights(mil), size, mil


@pytest.fixture(scope="module")
def compiled() -> dict[str, edgeport.Program]:
    """ConvLinear exported once in float and once per scheme."""
    out = {"float": _export(None)}
    for scheme in STORED:
        out[scheme] = _export(scheme, IOS18 if scheme == "int4-weight" else None)
    return out


@pytest.mark.parametrize("scheme", STORED)
def test_weights_are_stored_compressed_at_their_bits(compiled, scheme):
    op, dtype, bits = STORED[scheme]
    program = compiled[scheme]
    (info,) = program.manifest.artifacts.values()
    assert info.metadata["scheme"] == scheme and info.options["scheme"] == scheme
    weights, size, _ = _read(program)
    assert [(w.op, w.dtype) for w in weights] == [(op, dtype)] * 2
    stored = sum(torch.Size(w.shape).numel() for w in weights)
    if dtype == "uint8":  # palette indices, packed: bits per weight / 8 bytes
        assert stored == WEIGHTS * bits // 8
        assert {w.lut_shape[-2 if len(w.lut_shape) > 1 else 0] for w in weights} == {2**bits}
    else:
        assert stored == WEIGHTS
    _, float_size, _ = _read(compiled["float"])
    ratio = size / float_size
    print(f"\n{scheme}: weight file {size} bytes, {ratio:.2f}x the fp16 model's {float_size}")
    scales = 32 / 32 if scheme == "int4-weight" else 0  # an fp16 scale and offset per block of 32: a bit a weight
    assert ratio <= (bits + scales) / 16 + 0.01  # of fp16 weights; the tables, channel scales and biases add little


def test_int8_activations_are_mil_quantize_ops_with_the_calibrated_scales(compiled):
    from coremltools.converters.mil.mil import types

    program = compiled["int8"]
    _, _, mil = _read(program)
    ops = [op for f in mil.functions.values() for op in f.operations if op.op_type in ("quantize", "dequantize")]
    assert {types.builtin_to_string(op.outputs[0].dtype) for op in ops if op.op_type == "quantize"} == {"int8"}
    mil_scales = [float(op.inputs["scale"].val) for op in ops]
    (step,) = [s for s in program.manifest.methods["forward"].steps if s.kind == "delegate"]
    graph = stored_program(program.files, step.reference).graph
    calibrated = {float(n.args[1]) for n in graph.nodes if str(n.target).startswith("quantized_decomposed.quantize")}
    assert len(calibrated) == 4  # the input, relu (conv fused), add and linear outputs
    # every calibrated scale is in the ML program (in fp16; coremltools may fold two into one op's scale)
    assert all(any(abs(m - scale) <= 1e-3 * scale for m in mil_scales) for scale in calibrated), (calibrated, mil_scales)


def test_weight_only_schemes_leave_activations_float(compiled):
    for scheme in ("int4-weight", "palettize4", "palettize6"):
        (info,) = compiled[scheme].manifest.artifacts.values()
        assert "quantize" not in info.metadata["mil_ops"], scheme


def test_the_summary_names_each_op_whose_weight_is_too_small_to_compress(compiled, caplog):
    """A conv of 216 weights said "coreml: quantizes its 2 op(s) with palettize4" and
    palettized nothing (coremltools keeps a weight of 2,048 elements or fewer in fp16).
    And the ops that have no weight were counted as quantized: the transformer encoder's
    said "quantizes 42 of its 43 op(s)" for 9 compressed weights."""
    summary = compiled["palettize4"].manifest.report["forward"]["quantization"]["backends"]["coreml"]
    assert summary == "quantizes 2 of its 5 op(s) with palettize4"  # the conv and the linear: both compressed
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4096)).eval()
    caplog.set_level("WARNING", logger="edgeport.quantize")
    program = edgeport.export(small, (torch.randn(1, 3, 6, 6),), ["coreml"], quantize="palettize4",
                              registry=registry_for(CoreMLBackend()))
    report = program.manifest.report["forward"]["quantization"]
    assert report["backends"]["coreml"] == (
        "quantizes 1 of its 4 op(s) with palettize4, but 1 stays float: convolution (its weight has 216 elements: "
        "Core ML keeps a weight of 2,048 or fewer in fp16)")
    assert report["quantizes_nothing"] is False
    tiny = edgeport.export(nn.Linear(16, 8).eval(), (torch.randn(1, 16),), ["coreml"], quantize="palettize4",
                           registry=registry_for(CoreMLBackend()))
    assert tiny.manifest.report["forward"]["quantization"]["quantizes_nothing"] is True
    assert "nothing is quantized, the program runs in float (coreml: quantizes none of its 1 op(s)" in caplog.text


def test_schemes_coreml_cannot_do_are_refused_with_the_reason():
    """They exported every node to portable torch, a float program."""
    with pytest.raises(edgeport.QuantizationError) as info:
        _export("int4-weight")  # iOS17, the default target
    assert str(info.value).startswith("no selected backend quantizes with int4-weight: coreml: coreml: per-block "
                                      "int4 weights need iOS18/macOS15")
    assert "--option coreml.minimum_deployment_target=iOS18" in str(info.value)
    for scheme, words in (("a16w8", "8-bit"), ("int8-dynamic", "calibrated (static) ranges")):
        with pytest.raises(edgeport.QuantizationError) as info:
            _export(scheme)
        assert str(info.value).startswith(f"no selected backend quantizes with {scheme}: coreml offers int4-weight, "
                                          "int8, palettize4, palettize6") and words in str(info.value)


@pytest.mark.skipif(ON_MACOS, reason="checks the Linux behaviour")
def test_running_says_core_ml_runs_only_on_macos(compiled):
    with pytest.raises(edgeport.EdgeportError, match="Core ML runs only on macOS"):
        compiled["int8"](torch.randn(1, 32, 6, 6))


@pytest.mark.parametrize("scheme", [pytest.param(s, marks=macos_only) for s in STORED])
def test_compressed_model_runs_close_to_its_reference_on_macos(compiled, scheme):
    program = compiled[scheme]
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        actual, expected = program(x), reference_program(program)(x)
    assert float((actual - expected).abs().max()) <= 0.1 * float(expected.abs().max())


def _mil_ops(result) -> dict[str, int]:
    """MIL op counts over a conformance result's Core ML artifacts."""
    counts: dict[str, int] = {}
    for info in result.program.manifest.artifacts.values():
        for op, n in info.metadata["mil_ops"].items():
            counts[op] = counts.get(op, 0) + n
    return counts


@pytest.fixture(scope="module")
def conformance():
    return {r.name: r for r in run_quantized_conformance(CoreMLBackend())}


@pytest.mark.slow
def test_quantized_cases_compile_on_coreml_or_name_their_reason(conformance):
    assert len(conformance) == len(QUANTIZED_CASES)
    assert {name: r.error for name, r in conformance.items() if not r.passed} == {}
    int8 = {c.name for c in QUANTIZED_CASES if c.scheme == "int8"}
    partly = {name for name in int8 if conformance[name].delegated < 1.0}
    assert partly == set(PARTLY)
    for name, words in PARTLY.items():
        assert any(words in reason for reason in conformance[name].reasons.values()), conformance[name].reasons
    for name in ACTIVATIONS_QUANTIZED:
        ops = _mil_ops(conformance[name])
        assert ops.get("quantize") and ops.get("dequantize"), (name, ops)
    if not CoreMLBackend().availability().can_run:  # compiled and checked; running is macOS's
        assert all(r.max_error is None for r in conformance.values())
    for case in QUANTIZED_CASES:
        if case.scheme == "int8-dynamic":
            reasons = set(conformance[case.name].reasons.values())
            assert len(reasons) == 1 and "coreml does not offer int8-dynamic" in reasons.pop()
        elif case.scheme == "int4-weight":  # iOS17 by default
            reasons = set(conformance[case.name].reasons.values())
            assert len(reasons) == 1 and "per-block int4 weights need iOS18" in reasons.pop()


@pytest.mark.slow
def test_int4_cases_compile_for_ios18():
    cases = [c for c in QUANTIZED_CASES if c.scheme == "int4-weight"]
    results = run_quantized_conformance(CoreMLBackend(), cases, options=IOS18)
    assert {r.name: (r.error, r.delegated) for r in results if not r.passed or r.delegated < 1.0} == {}
    assert all(_mil_ops(r).get("constexpr_blockwise_shift_scale") for r in results)
