"""The LLM program on the NPU backends, on a tiny random Llama (3 layers): placement, the
KV cache as program state, and greedy tokens against the fp32 cpu program.

- qualcomm: both methods lower whole to QNN HTP (fp16) and run in QNN's HTP simulator;
- coreml: compiles here (iOS 18 target), runs on macOS only;
- mediatek: NeuroPilot-legal TFLite, run on LiteRT's CPU as a labelled reference.

The real SmolLM2 runs the same way in bench/llm_npu.py (too slow in the simulator for CI).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeport
import edgeport.llm
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import registry_for

from test_architectures import tiny_model_dir

pytestmark = pytest.mark.slow

MAX_SEQ_LEN, CHUNK, LAYERS = 32, 8, 3
PROMPT = [5, 6, 7, 8, 9, 10, 11]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, _ = tiny_model_dir(tmp_path_factory.mktemp("hf"), "llama")
    return path


def export(path, backend, **kwargs) -> edgeport.Program:
    return edgeport.llm.export(path, backend=backend.name, max_seq_len=MAX_SEQ_LEN, prefill_chunk=CHUNK,
                               registry=registry_for(backend, CpuBackend()), **kwargs)


def greedy(program: edgeport.Program) -> tuple[list[int], np.ndarray]:
    """NEW_TOKENS greedy tokens after PROMPT, and the logits that picked each."""
    session = edgeport.llm.Session(program)
    logits = [session.prefill(PROMPT, 0)]
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < NEW_TOKENS:
        logits.append(session.decode(tokens[-1]))
        tokens.append(int(logits[-1].argmax()))
    return tokens, np.stack(logits)


@pytest.fixture(scope="module")
def cpu_reference(tiny):
    return greedy(export(tiny, CpuBackend()))


def assert_cache_is_program_state(program: edgeport.Program) -> None:
    """Each method writes the new K and V rows of every layer as row updates of the shared
    state (the runtime writes them in place), never the whole cache."""
    for method in ("decode", "prefill"):
        plan = program.manifest.methods[method]
        assert plan.state_writes == {} and len(plan.row_updates) == 2 * LAYERS
    assert len(program.manifest.state) == 2 * LAYERS


# -- qualcomm ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qualcomm_program(tiny):
    pytest.importorskip("onnxruntime_qnn")
    pytest.importorskip("onnxscript")
    from edgeport.backends.qualcomm import QualcommBackend

    return export(tiny, QualcommBackend())


def test_qualcomm_takes_every_node_of_both_methods_as_one_htp_context(qualcomm_program):
    for method in ("decode", "prefill"):
        assert {n["backend"] for n in qualcomm_program.report(method)["nodes"]} == {"qualcomm"}
        steps = qualcomm_program.manifest.methods[method].steps
        assert [(s.kind, s.backend) for s in steps] == [("delegate", "qualcomm")]
        info = qualcomm_program.manifest.artifacts[steps[0].artifact]
        assert info.metadata["format"] == "onnx-epcontext" and info.metadata["precision"] == "fp16"
    assert_cache_is_program_state(qualcomm_program)


def test_qualcomm_greedy_tokens_in_the_simulator_equal_the_fp32_cpu_program(qualcomm_program, cpu_reference):
    from edgeport.backends.qualcomm import QualcommBackend

    assert QualcommBackend().availability().runs_on in ("simulator", "device")
    tokens, logits = greedy(qualcomm_program)
    expected, reference = cpu_reference
    assert tokens == expected
    # HTP computes in fp16: logits agree to fp16's ~3 digits, relative to their scale.
    assert np.abs(logits - reference).max() < 1e-2 * np.abs(reference).max()


# -- mediatek ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mediatek_program(tiny):
    from edgeport.backends.mediatek import MediatekBackend

    if not MediatekBackend().availability().can_compile:
        pytest.skip(MediatekBackend().availability().why)
    return export(tiny, MediatekBackend())


def test_mediatek_takes_every_layer_and_the_head_and_says_why_not_the_lookups(mediatek_program):
    """Decode is one portable step (the embedding and rotary-table lookups, and the
    int64 position mask, none of which NeuroPilot legalizes) then one NeuroPilot delegate
    holding every layer and the lm_head."""
    report = mediatek_program.report("decode")
    steps = mediatek_program.manifest.methods["decode"].steps
    assert [(s.kind, s.backend) for s in steps] == [("portable", None), ("delegate", "mediatek")]
    compute = {"aten.mm.default", "aten.bmm.default", "aten.linear.default", "aten._softmax.default", "aten.rsqrt.default"}
    assert {n["backend"] for n in report["nodes"] if n["op"] in compute} == {"mediatek"}
    portable = [n for n in report["nodes"] if n["backend"] == "portable"]
    assert {n["op"] for n in portable} >= {"aten.embedding.default"}
    assert all("MediaTek NeuroPilot" in n["reasons"]["mediatek"] for n in portable)
    assert_cache_is_program_state(mediatek_program)


def test_mediatek_greedy_tokens_on_the_cpu_reference_equal_the_fp32_cpu_program(mediatek_program, cpu_reference):
    from edgeport.backends.mediatek import MediatekBackend

    assert MediatekBackend().availability().runs_on in ("reference (CPU)", "device")
    tokens, logits = greedy(mediatek_program)
    expected, reference = cpu_reference
    assert tokens == expected
    assert np.abs(logits - reference).max() < 1e-4 * np.abs(reference).max()  # fp32 on LiteRT's CPU
