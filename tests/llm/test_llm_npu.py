"""The LLM program on the NPU backends, on a tiny random Llama (3 layers): placement, the
KV cache as program state, and greedy tokens against the fp32 cpu program.

- qualcomm: both methods lower whole to QNN HTP (fp16) and run in QNN's HTP simulator;
- coreml: compiles here (iOS 18 target), runs on macOS only;
- mediatek: NeuroPilot-legal TFLite, run on LiteRT's CPU as a labelled reference.

The real SmolLM2 runs the same way in bench/llm_npu.py (too slow in the simulator for CI).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgeport
import edgeport.llm
from edgeport.backends.cpu import CpuBackend
from edgeport.portable import stored_tensors
from edgeport.testing import registry_for
from llm_sessions import greedy

from tiny_llms import tiny_model_dir

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


@pytest.fixture(scope="module")
def cpu_reference(tiny):
    return greedy(export(tiny, CpuBackend()), PROMPT, NEW_TOKENS)


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


def test_a_float_qualcomm_program_states_the_fp16_context_it_loads(qualcomm_program, tiny):
    """Not the float32 decoder's bytes: the decode method's QNN context binary, which
    holds the weights in fp16 (and, for so tiny a model, mostly graph)."""
    from safetensors.torch import load_file

    from edgeport.backends.qualcomm.qnn_runtime import context_binary

    meta = qualcomm_program.manifest.metadata["llm"]
    (path,) = {s.artifact for s in qualcomm_program.manifest.methods["decode"].steps}
    assert meta["weights"] == "float16"
    assert meta["weight_bytes"] == len(context_binary(qualcomm_program.files[path]))
    assert meta["weight_bytes"] > 2 * sum(t.numel() for t in load_file(tiny / "model.safetensors").values())


def test_explain_shows_htp_placement_and_the_cache_written_in_place_by_the_runtime(qualcomm_program, tmp_path):
    from click.testing import CliRunner

    from edgeport.cli import cli

    path = tmp_path / "tiny-qnn.edgeport"
    qualcomm_program.save(path)
    table = CliRunner().invoke(cli, ["explain", str(path), "--method", "decode"], catch_exceptions=False).output
    assert "qualcomm" in table and "100%" in table
    assert f"state: {2 * LAYERS} buffer(s) written row by row in place by the runtime" in table
    data = json.loads(CliRunner().invoke(cli, ["explain", str(path), "--method", "decode", "--json"]).output)
    assert len(data["state_writes"]["rows_in_place_by_runtime"]) == 2 * LAYERS and data["state_writes"]["whole"] == []


def test_explain_without_a_method_explains_prefill_and_decode(qualcomm_program, tmp_path):
    """An LLM program has no forward: `explain` without --method used to be an error
    asking for one; it explains both methods, each under its name."""
    from click.testing import CliRunner

    from edgeport.cli import cli

    path = tmp_path / "tiny-qnn.edgeport"
    qualcomm_program.save(path)
    table = CliRunner().invoke(cli, ["explain", str(path)], catch_exceptions=False).output
    assert "method prefill" in table and "method decode" in table
    assert table.count(f"state: {2 * LAYERS} buffer(s) written row by row in place by the runtime") == 2
    data = json.loads(CliRunner().invoke(cli, ["explain", str(path), "--json"]).output)
    assert sorted(data["methods"]) == ["decode", "prefill"]
    assert data["methods"]["decode"] == json.loads(
        CliRunner().invoke(cli, ["explain", str(path), "--method", "decode", "--json"]).output)
    html = CliRunner().invoke(cli, ["explain", str(path), "--html", str(tmp_path / "p.html")])
    assert html.exit_code == 1 and "it has decode, prefill" in html.output
    run = CliRunner().invoke(cli, ["run", str(path)])
    assert run.exit_code == 1 and "to generate text: edgeport llm generate PROGRAM --prompt TEXT" in run.output


def test_generate_labels_a_simulator_run_as_such(qualcomm_program, tmp_path):
    """The speed line of `edgeport llm generate` says where decode ran when it is not the
    device: simulator tok/s say nothing about a phone."""
    from click.testing import CliRunner

    from edgeport.cli import cli

    path = tmp_path / "tiny-qnn.edgeport"
    qualcomm_program.save(path)
    result = CliRunner().invoke(cli, ["llm", "generate", str(path), "--prompt", "w5 w6 w7", "--max-new-tokens", "3"],
                                catch_exceptions=False)
    assert "decode runs on qualcomm: simulator" in result.stderr
    data = json.loads(CliRunner().invoke(cli, ["llm", "generate", str(path), "--prompt", "w5 w6 w7", "--max-new-tokens",
                                               "3", "--json"]).stdout)
    assert data["runs_on"] == ["qualcomm: simulator"] and len(data["token_ids"]) == 3


def test_qualcomm_greedy_tokens_in_the_simulator_equal_the_fp32_cpu_program(qualcomm_program, cpu_reference):
    from edgeport.backends.qualcomm import QualcommBackend

    assert QualcommBackend().availability().runs_on in ("simulator", "device")
    tokens, logits = greedy(qualcomm_program, PROMPT, NEW_TOKENS)
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
    compute = {"aten.mm.default", "aten.bmm.default", "aten.linear.default", "aten._softmax.default",
               "aten.rsqrt.default"}
    assert {n["backend"] for n in report["nodes"] if n["op"] in compute} == {"mediatek"}
    portable = [n for n in report["nodes"] if n["backend"] == "portable"]
    assert {n["op"] for n in portable} >= {"aten.embedding.default"}
    assert all("MediaTek NeuroPilot" in n["reasons"]["mediatek"] for n in portable)
    assert_cache_is_program_state(mediatek_program)


def test_mediatek_stores_the_weights_once_for_both_methods(mediatek_program):
    """decode's and prefill's NeuroPilot delegates are one merged TFLite model, a
    subgraph each (decode first), over shared weight buffers."""
    assert list(mediatek_program.manifest.artifacts) == ["artifacts/mediatek.tflite"]
    entries = [s.entry for m in ("decode", "prefill") for s in mediatek_program.manifest.methods[m].steps
               if s.kind == "delegate"]
    assert entries == [0, 1, 2]


def _lookup_bytes(program: edgeport.Program) -> int:
    """What decode's portable lookup step stores: the embedding table, the rotary tables."""
    (step,) = [s for s in program.manifest.methods["decode"].steps if s.kind == "portable"]
    return sum(len(program.files[path]) for path in stored_tensors(program.files, step.program))


def test_mediatek_states_the_weights_decode_loads_the_merged_model_and_the_lookup_table(mediatek_program, tiny):
    from edgeport.backends.mediatek import MediatekBackend

    meta = mediatek_program.manifest.metadata["llm"]
    assert meta["weights"] == "float32"
    assert meta["weight_bytes"] == len(mediatek_program.files["artifacts/mediatek.tflite"]) + _lookup_bytes(
        mediatek_program)
    # fp16 weights in the NeuroPilot model; the lookups stay float32, and the line says both
    fp16 = export(tiny, MediatekBackend(), options={"mediatek": {"fp16": True}})
    assert fp16.manifest.metadata["llm"]["weights"] == "float16 and float32"
    tflite = len(fp16.files["artifacts/mediatek.tflite"])
    assert fp16.manifest.metadata["llm"]["weight_bytes"] == tflite + _lookup_bytes(fp16)
    assert tflite < 0.6 * len(mediatek_program.files["artifacts/mediatek.tflite"])


def test_mediatek_merged_model_runs_through_litert_compiled_model_as_on_a_device(mediatek_program, cpu_reference,
                                                                                 monkeypatch):
    """On a device the merged model runs through LiteRT's CompiledModel, one signature
    per entry; here the same API runs on its CPU accelerator (no APU) and must give the
    same tokens."""
    from edgeport.backends.mediatek import backend as mediatek_backend
    from edgeport.backends.mediatek.runtime import CompiledModelEntries

    monkeypatch.setattr(mediatek_backend.tflite, "TfliteEntries",
                        lambda data, keys, io_names, threads: CompiledModelEntries(data, threads, npu=False))
    tokens, logits = greedy(mediatek_program, PROMPT, NEW_TOKENS)
    expected, reference = cpu_reference
    assert tokens == expected
    assert np.abs(logits - reference).max() < 1e-4 * np.abs(reference).max()


def test_mediatek_greedy_tokens_on_the_cpu_reference_equal_the_fp32_cpu_program(mediatek_program, cpu_reference):
    from edgeport.backends.mediatek import MediatekBackend

    assert MediatekBackend().availability().runs_on in ("reference (CPU)", "device")
    tokens, logits = greedy(mediatek_program, PROMPT, NEW_TOKENS)
    expected, reference = cpu_reference
    assert tokens == expected
    assert np.abs(logits - reference).max() < 1e-4 * np.abs(reference).max()  # fp32 on LiteRT's CPU


# -- coreml ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coreml_program(tiny):
    from edgeport.backends.coreml import CoreMLBackend

    if not CoreMLBackend().availability().can_compile:
        pytest.skip(CoreMLBackend().availability().why)
    return export(tiny, CoreMLBackend(), options={"coreml": {"minimum_deployment_target": "iOS18"}})


def test_coreml_decode_compiles_as_a_stateful_ml_program_with_the_cache_as_states(coreml_program):
    """Checked here (Linux): one fp16 state per cache buffer, each written back, the
    method's own inputs in and fp32 logits out; the package re-loads and type-checks."""
    from edgeport.backends.coreml import package

    meta = coreml_program.manifest.metadata["llm"]["stateful_decode"]
    assert meta["backend"] == "coreml" and meta["minimum_deployment_target"] == "iOS18"
    assert "macOS" in meta["runs_on"]
    states = {s["buffer"]: s for s in meta["states"]}
    assert set(states) == {f"decoder.layers.{i}.{kv}_cache" for i in range(LAYERS) for kv in "kv"}
    assert {(tuple(s["shape"]), s["dtype"]) for s in states.values()} == {((2, MAX_SEQ_LEN, 16), "FLOAT16")}
    assert [(f["name"], f["shape"], f["dtype"]) for f in meta["inputs"]] == [("token", [1, 1], "INT32"),
                                                                             ("position", [1], "INT32")]
    assert [(f["name"], f["shape"], f["dtype"]) for f in meta["outputs"]] == [("logits", [1, 96], "FLOAT32")]
    assert meta["mil_ops"]["read_state"] == meta["mil_ops"]["write_state"] == 2 * LAYERS
    with package.opened(coreml_program.files[meta["file"]]) as path:
        spec = package.load_spec(path)
        package.validate(path)
    assert [s.name for s in spec.description.state] == [s["name"] for s in meta["states"]]


def test_coreml_stateless_methods_compile_too_and_say_they_run_on_macos_only(coreml_program):
    """The program's own methods (cache as edgeport state) lower whole to Core ML; here
    they cannot run, and loading says so."""
    from edgeport.backends.coreml import CoreMLBackend

    for method in ("decode", "prefill"):
        assert {n["backend"] for n in coreml_program.report(method)["nodes"]} == {"coreml"}
    assert_cache_is_program_state(coreml_program)
    availability = CoreMLBackend().availability()
    if not availability.can_run:
        assert "macOS" in availability.why
        with pytest.raises(edgeport.EdgeportError, match="macOS"):
            edgeport.llm.Session(coreml_program).decode(0)


def test_off_macos_the_coreml_program_generates_on_its_torch_reference_labelled_so(coreml_program, cpu_reference,
                                                                                  tmp_path):
    """`edgeport llm generate --reference` runs each Core ML partition's torch program and
    says so in the speed line; its greedy tokens are the fp32 cpu program's. Without the
    flag: one line, whose hint names it."""
    from click.testing import CliRunner

    from edgeport.backends.coreml import CoreMLBackend
    from edgeport.cli import cli

    if CoreMLBackend().availability().can_run:
        pytest.skip("Core ML runs here: the program runs as itself")
    path = tmp_path / "coreml.edgeport"
    coreml_program.save(path)
    tokens, _ = greedy(edgeport.load(path, reference=True), PROMPT, NEW_TOKENS)
    assert tokens == cpu_reference[0]
    prompt = " ".join(f"w{i}" for i in PROMPT)  # the tiny word-level vocabulary: w5 is id 5
    run = ["llm", "generate", str(path), "--prompt", prompt, "--max-new-tokens", str(NEW_TOKENS)]
    result = CliRunner().invoke(cli, [*run, "--reference", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["token_ids"] == cpu_reference[0] and report["runs_on"] == ["coreml: torch reference"]
    refused = CliRunner().invoke(cli, run)
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "Core ML runs only on macOS" in refused.output and "--reference" in refused.output


def test_a_float_coreml_program_states_the_fp16_weights_core_ml_stores(coreml_program, tiny):
    """Not the float32 decoder's bytes: what the decode package's weight.bin holds."""
    from safetensors.torch import load_file

    meta = coreml_program.manifest.metadata["llm"]
    (path,) = {s.artifact for s in coreml_program.manifest.methods["decode"].steps}
    assert meta["weights"] == "float16"
    assert meta["weight_bytes"] == coreml_program.manifest.artifacts[path].metadata["weight_bytes"]
    fp32_bytes = 4 * sum(t.numel() for t in load_file(tiny / "model.safetensors").values())
    assert 0.45 * fp32_bytes < meta["weight_bytes"] < 0.55 * fp32_bytes


def test_coreml_states_need_ios18_and_the_error_says_so():
    """Below iOS 18 there are no states: the stateful compile refuses with a hint (the LLM
    export then records that reason in place of the stateful decode)."""
    from edgeport.backends.coreml import CoreMLBackend, CoreMLOptions

    class Counter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(2))

        def forward(self, x):
            self.count.add_(x)
            return self.count * 2

    program = torch.export.export(Counter(), (torch.ones(2),))
    with pytest.raises(edgeport.BackendError, match="iOS 18") as error:
        CoreMLBackend().compile_stateful(program, CoreMLOptions(minimum_deployment_target="iOS17"), ["out"])
    assert "minimum_deployment_target=iOS18" in error.value.hint


def test_coreml_llm_export_below_ios18_records_why_it_has_no_stateful_decode(tiny):
    """The stateless methods stay (exported as usual); the stateful decode is replaced by
    the reason, in the manifest, and nothing half-made is stored."""
    import dataclasses
    from types import SimpleNamespace

    from edgeport.backends.coreml import CoreMLBackend
    from edgeport.llm.loader import load_model
    from edgeport.llm.model import Decoder, Prefill
    from edgeport.llm.stateful import attach_stateful_decode
    from edgeport.llm.weights import build_decoder

    loaded = load_model(tiny)
    decoder = build_decoder(loaded.config, loaded.weights, MAX_SEQ_LEN)
    values = {**dict(Prefill(decoder).named_parameters()), **dict(Prefill(decoder).named_buffers())}
    proto = Decoder(dataclasses.replace(loaded.config, layers=1), MAX_SEQ_LEN)
    # attach_stateful_decode reads and writes only these parts of a Program
    program = SimpleNamespace(manifest=SimpleNamespace(metadata={"llm": {}}, files={}), files={})
    messages = []
    attach_stateful_decode(program, "coreml", proto, values, scheme=None, options={"coreml": {"minimum_deployment_target": "iOS17"}},
                           registry=registry_for(CoreMLBackend()), progress=messages.append)
    meta = program.manifest.metadata["llm"]["stateful_decode"]
    assert "iOS 18" in meta["skipped"] and "minimum_deployment_target=iOS18" in meta["skipped"] and "file" not in meta
    assert not program.files and any("not made" in m for m in messages)


# -- quantized weights on an NPU backend ---------------------------------------------------


LONG_CACHE = 96


@pytest.fixture(scope="module")
def long_tiny(tmp_path_factory):
    """Heads of 32 and a 96-position cache: rotary tables of 96 x 32, past coremltools'
    2,048-element threshold and in whole blocks of 32, so int4 would take them."""
    path, _ = tiny_model_dir(tmp_path_factory.mktemp("hf-long"), "llama", max_position_embeddings=LONG_CACHE,
                             num_attention_heads=2, num_key_value_heads=1)
    return path


@pytest.fixture(scope="module")
def coreml_int4_program(long_tiny):
    from edgeport.backends.coreml import CoreMLBackend

    if not CoreMLBackend().availability().can_compile:
        pytest.skip(CoreMLBackend().availability().why)
    return edgeport.llm.export(long_tiny, backend="coreml", max_seq_len=LONG_CACHE, prefill_chunk=CHUNK,
                               quantize="int4-weight", options={"coreml": {"minimum_deployment_target": "iOS18"}},
                               registry=registry_for(CoreMLBackend()))


def test_coreml_int4_weight_stores_every_linear_and_the_embedding_as_int4_blocks_in_each_model(
        coreml_int4_program, long_tiny):
    """prefill, decode and the stateful decode each hold every linear and the lm_head as
    uint4 in blocks of 32 inputs with a scale and an offset per block, and the embedding
    (read by a gather) as int8 rows: each value is its float weight's nearest step.
    Nothing else is compressed (the rotary tables are buffers: they stay float). Both
    methods stay whole on Core ML."""
    from edgeport.backends.coreml import compress, package
    from edgeport.llm.loader import load_model
    from edgeport.llm.model import Prefill
    from edgeport.llm.weights import build_decoder

    loaded = load_model(long_tiny)
    weights = {f"p_{name.replace('.', '_')}_to_fp16_quantized": p.detach().numpy()
               for name, p in Prefill(build_decoder(loaded.config, loaded.weights, LONG_CACHE)).named_parameters()
               if p.dim() == 2}
    assert len(weights) == 4 * LAYERS + 2  # qkv, o, gate_up, down per layer; the embedding; the untied head
    meta = coreml_int4_program.manifest.metadata["llm"]
    files = {"decode": "artifacts/decode/0.mlpackage.zip", "prefill": "artifacts/prefill/0.mlpackage.zip",
             "stateful decode": meta["stateful_decode"]["file"]}
    for model, path in files.items():
        with package.opened(coreml_int4_program.files[path]) as unzipped:
            program = package.validate(unzipped)
        stored = {w.name: w for w in compress.compressed_weights(program)}
        expanded = compress.expanded_weights(program)
        assert set(stored) == set(expanded) == set(weights), model
        for name, values in expanded.items():
            weight = weights[name]
            if name == "p_decoder_embed_to_fp16_quantized":  # read by a gather: int8 rows
                assert stored[name].dtype == "int8", (model, name)
                step, error = np.abs(weight).max(1, keepdims=True) / 127, np.abs(values - weight)
            else:  # 16 steps from each block's minimum to its maximum
                assert stored[name].dtype == "uint4", (model, name)
                blocks = weight.reshape(weight.shape[0], -1, 32)
                step = (blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True)) / 15
                error = np.abs(values.reshape(blocks.shape) - blocks)
            assert (error <= step / 2 * 1.01 + 1e-3).all(), (model, name)
    for method in ("decode", "prefill"):
        assert {n["backend"] for n in coreml_int4_program.report(method)["nodes"]} == {"coreml"}
    assert meta["weights"] == "int4-weight" and meta["stateful_decode"]["scheme"] == "int4-weight"
    fp16_bytes = sum(w.size * 2 for w in weights.values())
    assert meta["weight_bytes"] == coreml_int4_program.manifest.artifacts[files["decode"]].metadata["weight_bytes"]
    # 4 bits and a 16-bit scale and offset per 32 weights are 0.31x fp16, an int8 table 0.5x
    table = weights["p_decoder_embed_to_fp16_quantized"].size * 2
    assert meta["weight_bytes"] >= (fp16_bytes - table) * 0.31 + table * 0.5
    assert meta["weight_bytes"] < fp16_bytes * 0.5


@pytest.mark.parametrize("backend, scheme, options, says", [
    ("mediatek", "int8-dynamic", {}, "it offers none of the schemes llm export takes"),
    ("qualcomm", "int4-weight", {}, "of the schemes llm export takes, it offers a16w8$"),
    ("coreml", "int8-dynamic", {}, "of the schemes llm export takes, it offers int4-weight$"),
    ("coreml", "int4-weight", {"coreml": {"minimum_deployment_target": "iOS17"}}, "need iOS18"),
])
def test_a_weight_scheme_the_backend_does_not_apply_is_refused_before_the_model_is_read(
        backend, scheme, options, says, tmp_path):
    """Not a program left in portable torch: an error naming the reason, before any work
    (the model path does not even exist), and a hint with what each backend takes. The
    reason names only schemes llm export takes (coreml's suggested int8 and palettize6,
    qualcomm's int8, which it then refused)."""
    from edgeport.backends.coreml import CoreMLBackend
    from edgeport.backends.mediatek import MediatekBackend
    from edgeport.backends.qualcomm import QualcommBackend

    chosen = {"mediatek": MediatekBackend, "qualcomm": QualcommBackend, "coreml": CoreMLBackend}[backend]()
    with pytest.raises(edgeport.EdgeportError, match=says) as info:
        edgeport.llm.export(tmp_path / "no-model", backend=backend, quantize=scheme, options=options,
                            registry=registry_for(chosen))
    assert f"--backend {backend} cannot quantize with {scheme}" in str(info.value)
    assert "int4-weight with --backend coreml" in info.value.hint


# -- mediatek with cpu: no step needs torch --------------------------------------------------


@pytest.fixture(scope="module")
def mediatek_cpu_program(tiny):
    from edgeport.backends.mediatek import MediatekBackend

    if not MediatekBackend().availability().can_compile:
        pytest.skip(MediatekBackend().availability().why)
    return edgeport.llm.export(tiny, backend="mediatek,cpu", max_seq_len=MAX_SEQ_LEN, prefill_chunk=CHUNK,
                               registry=registry_for(MediatekBackend(), CpuBackend()))


def test_mediatek_with_cpu_runs_the_lookups_on_cpu_so_no_step_needs_torch(mediatek_cpu_program, cpu_reference):
    """`--backend mediatek,cpu`: the embedding and rotary lookups and the position mask
    (not NeuroPilot-legal) run in a cpu delegate instead of portable torch, every layer
    and the head in the NeuroPilot one; each backend's delegates of both methods are one
    model (the embedding table stored once); the greedy tokens are the cpu program's."""
    from edgeport.torch_steps import portable_steps

    program = mediatek_cpu_program
    assert portable_steps(program.manifest) == []
    assert [s.backend for s in program.manifest.methods["decode"].steps] == ["cpu", "mediatek"]
    assert {a.backend for a in program.manifest.artifacts.values()} == {"cpu", "mediatek"}
    assert len(program.manifest.artifacts) == 2
    tokens, _ = greedy(program, PROMPT, NEW_TOKENS)
    assert tokens == cpu_reference[0]


def test_an_unknown_backend_is_refused_before_the_model_is_read(tmp_path):
    with pytest.raises(edgeport.EdgeportError, match="unknown backend 'nosuch'"):
        edgeport.llm.export(tmp_path / "no-model", backend="cpu,nosuch", registry=registry_for(CpuBackend()))


def test_llm_export_no_keep_reference_drops_the_torch_references_and_says_what_reference_needs(tiny, tmp_path):
    """A coreml program for a Mac need not carry the float torch programs that only
    `--reference` runs (1 GiB of SmolLM2's); without them, `--reference` says how to get them."""
    from click.testing import CliRunner

    from edgeport.backends.coreml import CoreMLBackend
    from edgeport.cli import cli

    availability = CoreMLBackend().availability()
    if not availability.can_compile or availability.can_run:
        pytest.skip("needs a machine where Core ML compiles but cannot run")
    path = tmp_path / "coreml.edgeport"
    exported = CliRunner().invoke(cli, ["llm", "export", str(tiny), "--backend", "coreml", "--max-seq-len",
                                        str(MAX_SEQ_LEN), "--prefill-chunk", str(CHUNK), "--no-keep-reference",
                                        "-o", str(path)])
    assert exported.exit_code == 0, exported.output
    program = edgeport.load(path)
    assert not [name for name in program.files if name.startswith("reference/")]
    assert all(step.reference is None for plan in program.manifest.methods.values() for step in plan.steps)
    refused = CliRunner().invoke(cli, ["llm", "generate", str(path), "--prompt", "w5 w6", "--reference"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "--keep-reference" in refused.output
