"""Hugging Face families quantized as users export them, where the quantized flow broke
or left ops in float (tiny configs, tests/zoo/models.py; SQNR against the float model
on the family's example, floors a few dB under what was measured on 2026-11-28):

- Swin, cpu int8 (30.2 dB): capturing the quantized graph failed ("Cannot view a
  tensor"): its attention's mask comes from a parameter, and a parameter requiring grad
  picked another CPU attention kernel, with another output layout, than the float
  graph's views were traced on (core/quantize/flow.py `_without_grad`).
- T5's encoder, qualcomm a16w8 (31.4 dB): calibration refused the log of its relative
  position buckets (-inf at distance 0); a value computed once at export is now no
  backend's to quantize (core/quantize/placement.py `place`).
- GPT-2 with its padding mask, qualcomm a16w8 (40.0 dB): its Conv1D linears (addmm)
  and its GELU's ``x ** 3`` ran in float between quantized ops, and its mask's index in
  a portable step between two partitions; now every op is quantized, in one partition.
- T5's encoder and Swin, qualcomm a16w8 (29.5 and 38.0 dB, 2026-11-28 evening): their
  attention's float mask (T5's position bias, Swin's relative position bias) kept it
  whole and in fp16, and Swin's window views, rank-4 only after quantizing, ran in fp16
  between quantized ops. On qualcomm every op of these cases now runs quantized.
- wav2vec2, qualcomm a16w8 (33.8 dB): its feature encoder's group norm ran in fp16
  (backends/qualcomm/group_norm.py).
"""

from __future__ import annotations

import pytest
import torch

import edgeport
from edgeport.devtools.quant_check import sqnr_db
from edgeport.testing import registry_for
from edgeport.testing.quantized_cases import calibration_for
from models import FAMILIES, MASKED_FAMILIES
from zoo_export import BACKENDS

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

CASES = [("swin", "cpu", "int8", 25.0), ("t5_encoder", "qualcomm", "a16w8", 26.0),
         ("swin", "qualcomm", "a16w8", 34.0), ("wav2vec2", "qualcomm", "a16w8", 30.0),
         ("gpt2_masked", "qualcomm", "a16w8", 35.0)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{b}-{s}" for f, b, s, _ in CASES])
def exported(request):
    name, backend, scheme, floor = request.param
    availability = BACKENDS[backend].availability()
    if not availability.can_run:
        pytest.skip(f"{backend} cannot run here: {availability.why}")
    family = FAMILIES.get(name) or MASKED_FAMILIES[name]
    module, example = family.module(), family.example()
    example = example if isinstance(example, tuple) else (example,)
    program = edgeport.export(module, example, [backend], quantize=scheme, calibration=calibration_for(example),
                              registry=registry_for(BACKENDS[backend]))
    return program, module, example, backend, floor


def test_one_partition_nothing_portable_and_near_float(exported):
    program, module, example, backend, floor = exported
    report = program.report()
    assert [p["backend"] for p in report["partitions"]] == [backend]
    with torch.no_grad():
        assert sqnr_db([program(*example)], [module(*example)]) >= floor


def test_every_op_runs_quantized_on_htp(exported):
    program, _, _, backend, _ = exported
    if backend != "qualcomm":
        pytest.skip("qualcomm's cases only")
    summary = program.manifest.report["forward"]["quantization"]["backends"]["qualcomm"]
    assert "float" not in summary, summary
    ops = {n["op"] for n in program.report()["nodes"] if "quantized" in n}
    assert "aten.scaled_dot_product_attention.default" not in ops
    assert {"aten.matmul.default", "aten._softmax.default"} <= ops
    reported = {n["op"] for n in program.report()["nodes"]}
    assert "aten.addmm.default" not in reported or "aten.addmm.default" in ops  # GPT-2's Conv1D


def test_an_int8_llama_on_htp_computes_its_reference_within_rounding():
    """Its RMS norms run in fp16 (backends/qualcomm/fp16_rms_norms.py): HTP's uint8 RmsNorm
    floored, and `edgeport check` failed the program 8.0 dB under its rounding spread;
    it passes 2.0 dB under it, and is 24.8 dB from float (23.0 before; 24.2 while a cat's inputs
    had parameters of their own, quantizer.py `JOINED`; 2026-11-29)."""
    from edgeport.devtools import check_program

    backend = BACKENDS["qualcomm"]
    if not backend.availability().can_run:
        pytest.skip(f"qualcomm cannot run here: {backend.availability().why}")
    module, example = FAMILIES["llama"].module(), FAMILIES["llama"].example()
    example = example if isinstance(example, tuple) else (example,)
    program = edgeport.export(module, example, ["qualcomm"], quantize="int8", calibration=calibration_for(example),
                              keep_reference=True, registry=registry_for(backend))
    [partition] = check_program(program, example, registry=registry_for(backend), locate=False).partitions
    assert partition.status == "pass", (partition.error, partition.spread)
    with torch.no_grad():
        assert sqnr_db([program(*example)], [module(*example)]) >= 23.5


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_attention_runs_int8_on_mediatek_and_checks_against_its_reference(name):
    """mediatek expands an unmasked attention into int8 BATCH_MATMULs, a MUL and a SOFTMAX
    (backends/tflite/expand.py). TFLite's own int8 BATCH_MATMUL, on the CPU reference,
    rounds a few products a step off (gemmlowp's fixed point): `edgeport check` failed
    both with the fp32 nudge alone, and passes with mediatek's `accumulator_error`
    (SQNR against float 2026-11-29: BERT 33.9 -> 33.5 dB, ViT 30.3 -> 30.0)."""
    from edgeport.devtools import check_program

    backend = BACKENDS["mediatek"]
    module, example = FAMILIES[name].module(), FAMILIES[name].example()
    example = example if isinstance(example, tuple) else (example,)
    program = edgeport.export(module, example, ["mediatek"], quantize="int8", calibration=calibration_for(example),
                              keep_reference=True, registry=registry_for(backend))
    float_ops = {n["op"] for n in program.report()["nodes"] if n.get("float_between_quantized")}
    assert float_ops == {"aten.native_layer_norm.default"}
    for inputs in [example, *_other_token_ids(example, (0, 4, 8) if name == "bert" else ())]:
        [partition] = check_program(program, inputs, registry=registry_for(backend), locate=False).partitions
        assert partition.status == "pass", (partition.error, partition.spread)
    with torch.no_grad():
        assert sqnr_db([program(*example)], [module(*example)]) >= {"bert": 32.5, "vit": 29.0}[name]


def _other_token_ids(example: tuple[torch.Tensor, ...], seeds: tuple[int, ...]) -> list[tuple[torch.Tensor, ...]]:
    """Random token ids like the example's, one set per seed: without the allowance,
    check failed BERT on those of seeds 0, 4 and 8 (5 of 12 seeds failed)."""
    (ids,) = example
    return [(torch.randint(0, int(ids.max()) + 1, ids.shape, generator=torch.Generator().manual_seed(100 + seed)),)
            for seed in seeds]
