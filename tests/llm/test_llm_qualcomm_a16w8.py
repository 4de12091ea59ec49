"""The LLM program quantized a16w8 for Qualcomm HTP (16-bit activations, int8 weights),
on a tiny random Llama (3 layers): both methods lower whole to quantized HTP contexts,
calibrated per layer on the built-in text, and the simulator computes the program's
fake-quantized torch reference.

The real SmolLM2 runs the same way in bench/llm_npu.py --quantize a16w8 (minutes per
export and seconds per token in the simulator: too slow for CI).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

import edgeport
import edgeport.llm
from edgeport.backends.cpu import CpuBackend
from edgeport.errors import EdgeportError
from edgeport.llm.static import CALIBRATION_TOKENS, MASK, calibration_batches
from edgeport.testing import registry_for
from llm_sessions import greedy

from tiny_llms import tiny_model_dir

MAX_SEQ_LEN, CHUNK, LAYERS = 32, 8, 3
PROMPT = [5, 6, 7, 8, 9, 10, 11]
NEW_TOKENS = 8
MIN_COSINE = 0.999  # HTP against the fake-quantized reference (issue 14's bar)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, _ = tiny_model_dir(tmp_path_factory.mktemp("hf"), "llama")
    return path


def test_calibration_runs_each_method_as_it_is_called():
    """Prefill gets whole chunks at consecutive positions, decode every token in order;
    each window the cache holds starts again at position 0."""
    batches = calibration_batches(list(range(100, 150)), max_seq_len=20, chunk=8)
    prefill, decode = batches["prefill"], batches["decode"]
    assert [b[1].tolist()[0] for b in prefill] == [0, 8, 0, 8, 0]  # windows of 20, 20, 10
    assert all(b[0].shape == (1, 8) and b[2].tolist() == [7] for b in prefill)
    assert [int(b[1]) for b in decode] == [*range(20), *range(20), *range(10)]
    assert [int(b[0]) for b in decode] == list(range(100, 150))


def test_a_finite_mask_computes_what_minus_infinity_does(tiny):
    """Calibrated schemes mask with `MASK`, not -inf (an observer cannot range over an
    infinity): the float model's logits do not change."""
    from edgeport.llm.loader import load_model
    from edgeport.llm.model import Prefill
    from edgeport.llm.weights import build_decoder

    loaded = load_model(tiny)
    logits = []
    for mask in (float("-inf"), MASK):
        decoder = build_decoder(loaded.config, dict(loaded.weights), MAX_SEQ_LEN)
        decoder.mask_value = mask
        with torch.no_grad():
            first = Prefill(decoder)(torch.tensor([PROMPT[:4] + [0] * 4]), torch.arange(8), torch.tensor([3]))
            second = Prefill(decoder)(torch.tensor([PROMPT[4:] + [0] * 5]), torch.arange(4, 12), torch.tensor([2]))
        logits.append(torch.cat([first, second]))
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-6)


def test_a16w8_on_a_backend_without_it_is_refused_before_any_work(tiny):
    with pytest.raises(EdgeportError, match="cpu cannot quantize with a16w8") as info:
        edgeport.llm.export(tiny, backend="cpu", quantize="a16w8", registry=registry_for(CpuBackend()))
    assert "--backend qualcomm" in info.value.hint


def test_the_cli_refuses_it_in_one_line(tiny, tmp_path):
    from click.testing import CliRunner

    from edgeport.cli import cli

    result = CliRunner().invoke(cli, ["llm", "export", str(tiny), "--quantize", "a16w8", "-o", str(tmp_path / "x.edgeport")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "cpu cannot quantize with a16w8" in result.output and "--backend qualcomm" in result.output


# -- the a16w8 program in QNN's HTP simulator (slow: calibration and two QNN compiles) ----


@pytest.fixture(scope="module")
def a16w8(tiny):
    pytest.importorskip("onnxruntime_qnn")
    pytest.importorskip("onnxscript")
    from edgeport.backends.qualcomm import QualcommBackend

    return edgeport.llm.export(tiny, backend="qualcomm", quantize="a16w8", max_seq_len=MAX_SEQ_LEN,
                               prefill_chunk=CHUNK, keep_reference=True,
                               registry=registry_for(QualcommBackend(), CpuBackend()))


@pytest.mark.slow
def test_both_methods_lower_whole_as_a16w8_htp_contexts_with_the_cache_as_state(a16w8):
    from edgeport.backends.qualcomm.qnn_runtime import context_binary

    for method in ("decode", "prefill"):
        assert {n["backend"] for n in a16w8.report(method)["nodes"]} == {"qualcomm"}
        plan = a16w8.manifest.methods[method]
        assert [(s.kind, s.backend) for s in plan.steps] == [("delegate", "qualcomm")]
        info = a16w8.manifest.artifacts[plan.steps[0].artifact]
        assert info.metadata["quantized"] == {"activations": "uint16", "weights": "int8"}
        assert plan.state_writes == {} and len(plan.row_updates) == 2 * LAYERS
        assert a16w8.report(method)["quantization"]["scheme"] == "a16w8"
    meta = a16w8.manifest.metadata["llm"]
    assert meta["weights"] == "a16w8"
    decode_context = a16w8.files[a16w8.manifest.methods["decode"].steps[0].artifact]
    assert meta["weight_bytes"] == len(context_binary(decode_context))  # what the device loads
    # calibration ran text through the caches; the program still starts with them empty
    assert all(info.get("fill") == 0 and "file" not in info for info in a16w8.manifest.state.values())


@pytest.mark.slow
def test_each_layer_is_calibrated_with_its_own_ranges(a16w8):
    """The decoder is captured whole, not one layer repeated: every linear of every
    layer (and the head) quantizes its output at its own scale, measured on decode's
    calibration calls (one per token of the built-in text, up to CALIBRATION_TOKENS)."""
    assert a16w8.report("decode")["quantization"]["calibration"]["batches"] == CALIBRATION_TOKENS
    scales = _linear_output_scales(a16w8, "decode")
    assert len(scales) == 4 * LAYERS + 1 and len(set(scales)) == len(scales)


def _linear_output_scales(program: edgeport.Program, method: str) -> list[float]:
    """The scale of the quantize after each linear of the method's reference graph."""
    from edgeport.portable import stored_program

    step = program.manifest.methods[method].steps[0]
    graph = stored_program(program.files, step.reference).graph
    scales = []
    for node in graph.nodes:
        if node.target == torch.ops.aten.linear.default:
            (user,) = node.users
            if "quantize_per_tensor" in str(user.target):
                scales.append(round(float(user.args[1]), 12))
    return scales


@pytest.mark.slow
def test_the_simulator_computes_the_fake_quantized_reference(a16w8):
    """The reference's greedy tokens, teacher-forced through HTP: every step's logits
    agree to cosine >= 0.999, and HTP picks the reference's token wherever the
    reference's margin over its runner-up exceeds HTP's error (a random tiny model's
    logits are nearly flat: its margins go down to 1e-3, so free-running greedy
    decoding may take another path after a near tie)."""
    from edgeport.backends.qualcomm import QualcommBackend
    from edgeport.testing.quantized_cases import reference_program

    assert QualcommBackend().availability().runs_on in ("simulator", "device")
    tokens, reference = greedy(reference_program(a16w8), PROMPT, NEW_TOKENS)
    session = edgeport.llm.Session(a16w8)
    logits = np.stack([session.prefill(PROMPT, 0), *(session.decode(t) for t in tokens[:-1])])
    error = np.abs(logits - reference).max()
    print(f"\na16w8 tiny Llama: HTP vs fake-quantized reference, largest logit error {error:.2e}")
    assert error < 1e-2 * np.abs(reference).max()
    for got, want in zip(logits, reference):
        got, want = got.ravel(), want.ravel()
        assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) >= MIN_COSINE
        runner_up, top = np.sort(want)[-2:]
        if top - runner_up > 2 * error:
            assert got.argmax() == want.argmax()


@pytest.mark.slow
def test_the_export_summary_says_what_runs_quantized_and_what_in_float(a16w8, capsys):
    """`edgeport llm export` printed each method's placement only: not that QNN computes
    some ops in float, nor the calibration's cost. No op stays float now; the table
    lookups, `probs @ V` (the V cache, program state), the masks' `where` and prefill's
    causal mask tiled over the head groups (a `repeat`: HTP runs a Tile in fp16) used to."""
    from edgeport.cli.llm import print_methods

    print_methods(a16w8)
    out = " ".join(capsys.readouterr().out.split())
    for method in ("decode", "prefill"):
        line = a16w8.report(method)["quantization"]["backends"]["qualcomm"]
        assert line.startswith("quantizes ") and line.endswith("with a16w8")
        assert f"qualcomm: {' '.join(line.split())}" in out
    assert f"calibration: {CALIBRATION_TOKENS} batches" in out
