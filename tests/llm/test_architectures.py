"""Small random Llama-family models saved as Hugging Face directories: the loader, the
export-friendly forward and the repeated layer capture, each against transformers' eager
forward. Covers Llama (with Llama 3.1 rope scaling), Qwen2 (q/k/v biases), Qwen3
(per-head q/k norms), Gemma (scaled embeddings, norms of 1 + weight, tanh GELU, a
head_dim of its own: 4 heads of 32 from a hidden size of 64) and Phi-3 (fused weights,
partial rotary, LongRoPE)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import edgeport
import edgeport.llm
from edgeport.backends.cpu import CpuBackend, CpuOptions
from edgeport.capture import capture
from edgeport.quantize import resolve_scheme
from edgeport.llm.loader import ModelLoadError, hf_config, load_model
from edgeport.llm.model import Decoder, Prefill
from edgeport.llm.calibration import TEXT as CALIBRATION_TEXT
from edgeport.llm.quantized import quantize_decoder
from edgeport.llm.stitch import repeat_layers
from edgeport.llm.text import TextCodec
from edgeport.llm.weights import build_decoder

transformers = pytest.importorskip("transformers")
from tiny_llms import ARCHS, VOCAB, tiny_model_dir  # noqa: E402
@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request, tmp_path_factory):
    return request.param, *tiny_model_dir(tmp_path_factory.mktemp("hf"), request.param)


@pytest.fixture(scope="module")
def registry():
    from edgeport.testing import registry_for

    return registry_for(CpuBackend())


def test_loader_reads_the_shape_and_switches_of_each_architecture(arch):
    name, path, model = arch
    config = load_model(path).config
    assert (config.architecture, config.layers, config.kv_heads, config.head_dim) == (
        name, 3, 2, getattr(model.config, "head_dim", None) or 64 // 4)
    assert config.attention_bias == (name == "qwen2") and config.qk_norm == (name == "qwen3")
    assert config.tie_embeddings == (name != "llama")
    assert config.rope_scaling.kind == {"llama": "llama3", "phi3": "longrope"}.get(name, "default")
    gemma = name == "gemma"
    assert (config.activation, config.scale_embeddings, config.norm_adds_one) == (
        "gelu_tanh" if gemma else "silu", gemma, gemma)
    assert config.rotary_dim == (12 if name == "phi3" else config.head_dim)


@pytest.mark.parametrize("max_seq_len", [32, 64])
def test_rope_tables_equal_transformers_at_every_cache_position(arch, max_seq_len):
    """cos and sin of each cache position, bit for bit, as transformers computes them for
    a sequence that long: Phi-3's LongRoPE takes its long factors past the 32 positions
    of its pretraining context (64, which the forward tests do not reach), where
    transformers switches to them too. Past the rotary dims, cos 1 and sin 0."""
    _, path, model = arch
    config = load_model(path).config
    decoder = Decoder(config, max_seq_len)
    with torch.no_grad():
        cos, sin = (t[0] for t in model.model.rotary_emb(torch.zeros(1), torch.arange(max_seq_len)[None]))
    rotary, half = config.rotary_dim, config.rotary_dim // 2
    assert torch.equal(decoder.rope_cos[:, :rotary], cos)
    assert torch.equal(decoder.rope_sin[:, :rotary], torch.cat([-sin[:, :half], sin[:, half:]], dim=-1))
    assert torch.equal(decoder.rope_cos[:, rotary:], torch.ones(max_seq_len, config.head_dim - rotary))
    assert torch.equal(decoder.rope_sin[:, rotary:], torch.zeros(max_seq_len, config.head_dim - rotary))


def test_exported_prefill_and_decode_match_transformers_eager(arch, registry):
    name, path, model = arch
    program = edgeport.llm.export(path, max_seq_len=32, prefill_chunk=8, registry=registry)
    assert all({n["backend"] for n in program.report(m)["nodes"]} == {"cpu"} for m in program.methods)
    decode = program.manifest.methods["decode"]  # the prefill graph, called with one token (one_graph.py)
    assert decode.steps == program.manifest.methods["prefill"].steps and list(decode.outputs[0].shape) == [1, VOCAB]
    session = edgeport.llm.Session(program)
    prompt = list(range(5, 16))  # 11 tokens: two prefill chunks, of 8 and 3
    logits = [session.prefill(prompt, 0)] + [session.decode(t) for t in (20, 30, 40)]
    with torch.no_grad():
        full = model(torch.tensor([prompt + [20, 30, 40]])).logits[0, len(prompt) - 1:]
    ours = torch.stack([torch.from_numpy(x) for x in logits])
    assert torch.allclose(ours, full, atol=1e-4, rtol=1e-4), (ours - full).abs().max()


def test_repeating_one_captured_layer_equals_capturing_every_layer(arch):
    _, path, _ = arch
    loaded = load_model(path)
    decoder = build_decoder(loaded.config, loaded.weights, max_seq_len=16)
    backends, options = [CpuBackend()], {"cpu": CpuOptions()}
    inputs = (torch.tensor([[3, 4, 5, 6]]), torch.arange(4), torch.tensor([3]))
    whole = capture(Prefill(decoder), inputs, backends, options)
    proto = Decoder(dataclasses.replace(loaded.config, layers=1), 16)
    values = {**dict(Prefill(decoder).named_parameters()), **dict(Prefill(decoder).named_buffers())}
    stitched = repeat_layers(capture(Prefill(proto), inputs, backends, options), loaded.config.layers, values)
    ops = lambda p: sorted(str(n.target) for n in p.graph.nodes if n.op == "call_function")  # noqa: E731
    assert ops(stitched) == ops(whole)
    assert [s.target for s in stitched.graph_signature.input_specs] == [s.target for s in whole.graph_signature.input_specs]
    assert [s.target for s in stitched.graph_signature.output_specs] == [s.target for s in whole.graph_signature.output_specs]
    assert torch.equal(stitched.module()(*inputs), whole.module()(*inputs))


def test_gemma_configs_legacy_gelu_is_the_tanh_one_and_what_the_forward_lacks_is_refused():
    raw = {"model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384,
           "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256}
    assert hf_config({**raw, "hidden_act": "gelu"}).activation == "gelu_tanh"  # gemma-2b's config.json
    assert hf_config({**raw, "hidden_activation": "gelu_pytorch_tanh"}).activation == "gelu_tanh"
    # no activation named: transformers' default for gemma; head_dim as given, not hidden / heads
    assert (hf_config(raw).activation, hf_config(raw).head_dim) == ("gelu_tanh", 256)
    with pytest.raises(ModelLoadError, match="'relu'"):
        hf_config({**raw, "hidden_act": "relu"})
    with pytest.raises(ModelLoadError, match="bidirectionally"):
        hf_config({**raw, "hidden_act": "gelu", "use_bidirectional_attention": True})


@pytest.mark.parametrize("scheme", ["int8-dynamic", "int4-weight"])
def test_quantized_export_runs_every_layer_in_one_delegate_as_the_quantized_model_computes(arch, registry, scheme):
    """Each repeated layer's linears are integer FULLY_CONNECTEDs inside the one cpu
    delegate (the repeated layers' weights are constants, as the first layer's are), the
    int8 embedding rows are gathered there too, and the logits are those of the same
    quantized decoder run eagerly in torch."""
    name, path, _ = arch
    loaded = load_model(path)
    program = edgeport.llm.export(loaded, max_seq_len=32, prefill_chunk=8, quantize=scheme, registry=registry)
    for method in program.methods:
        assert {n["backend"] for n in program.report(method)["nodes"]} == {"cpu"}
        assert [s.kind for s in program.manifest.methods[method].steps] == ["delegate"]
    assert program.manifest.metadata["llm"]["weights"] == scheme
    session = edgeport.llm.Session(program)
    prompt, continuation = list(range(5, 16)), [20, 30, 40]
    ours = torch.stack([torch.from_numpy(x) for x in
                        [session.prefill(prompt, 0)] + [session.decode(t) for t in continuation]])
    decoder = build_decoder(loaded.config, loaded.weights, max_seq_len=32)
    calibration = TextCodec(loaded.tokenizer_json, None, None).encode(CALIBRATION_TEXT)  # as export's
    quantize_decoder(decoder, resolve_scheme(scheme), calibration=calibration)
    tokens = torch.tensor([prompt + continuation])
    with torch.no_grad():
        eager = torch.cat([Prefill(decoder)(tokens, torch.arange(14), torch.tensor([i])) for i in range(10, 14)])
    error = (ours - eager).norm() / eager.norm()
    assert error < 2e-2, error


def test_cpu_first_before_an_npu_keeps_the_one_graph_form(tmp_path):
    """`--backend cpu,qualcomm` exported two graphs (cpu takes every op either way), and
    generating from SmolLM2 peaked at 1,653 MB RSS against 628 MB for `--backend cpu`:
    XNNPACK packed the weights once per graph."""
    from edgeport.llm import one_graph

    path, _ = tiny_model_dir(tmp_path, "llama")
    program = edgeport.llm.export(path, backend="cpu,qualcomm", max_seq_len=32, prefill_chunk=8)
    assert one_graph.takes_any_length(program.manifest.methods["prefill"])
    assert {n["backend"] for n in program.report("prefill")["nodes"]} == {"cpu"}
