"""The residual-stream rotation (core/llm/rotation.py) on small random Llama-family models:
the Hadamard-based matrices are orthogonal, the rotated decoder computes the float
function it computed before (the rotation only changes what quantization sees), and a
rotated int8-dynamic export computes what the rotated quantized decoder does."""

from __future__ import annotations

import pytest
import torch

import edgeport.llm
from edgeport.backends.cpu import CpuBackend
from edgeport.errors import EdgeportError
from edgeport.llm.calibration import TEXT as CALIBRATION_TEXT
from edgeport.llm.loader import load_model
from edgeport.llm.model import Prefill
from edgeport.llm.quantized import quantize_decoder
from edgeport.llm.rotation import orthogonal, rotate_decoder
from edgeport.llm.text import TextCodec
from edgeport.llm.weights import build_decoder
from edgeport.quantize import resolve_scheme
from edgeport.testing import registry_for

from tiny_llms import ARCHS, tiny_model_dir


@pytest.mark.parametrize("n", [576, 64, 12, 960])  # SmolLM2's hidden and head sizes; 960 has no Hadamard here
def test_the_rotation_is_orthogonal_and_spreads_every_channel_over_all(n):
    q = orthogonal(n)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=q.dtype), atol=1e-12)
    if n != 960:  # a Hadamard matrix: every entry ±1/√n, so no channel stays where it was
        assert torch.allclose(q.abs(), torch.full((n, n), n**-0.5, dtype=q.dtype))
    assert torch.equal(q, orthogonal(n))  # seeded: an export is reproducible


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_rotated_decoder_computes_the_same_logits(tmp_path, arch):
    path, _ = tiny_model_dir(tmp_path, arch)
    loaded = load_model(path)
    tokens, positions, last = torch.tensor([[3, 4, 5, 6, 7]]), torch.arange(5), torch.tensor([4])
    plain = build_decoder(loaded.config, loaded.weights, max_seq_len=16)
    with torch.no_grad():
        before = Prefill(plain)(tokens, positions, last)
        rotated = build_decoder(loaded.config, {k: v.clone() for k, v in loaded.weights.items()}, max_seq_len=16)
        rotate_decoder(rotated)
        after = Prefill(rotated)(tokens, positions, last)
    assert (rotated.head_mix is None) == (not loaded.config.tie_embeddings)
    assert not torch.equal(rotated.embed, plain.embed)
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4), (after - before).abs().max()


def test_a_rotated_int8_export_runs_in_one_cpu_delegate_as_the_rotated_quantized_model_computes(tmp_path):
    """Qwen2: tied head (its gamma through `head_mix`) and q/k/v biases."""
    path, _ = tiny_model_dir(tmp_path, "qwen2")
    loaded = load_model(path)
    registry = registry_for(CpuBackend())
    program = edgeport.llm.export(loaded, max_seq_len=32, prefill_chunk=8, quantize="int8-dynamic", rotate=True,
                                  registry=registry)
    for method in program.methods:
        assert [s.kind for s in program.manifest.methods[method].steps] == ["delegate"]
    session = edgeport.llm.Session(program)
    prompt, continuation = list(range(5, 16)), [20, 30]
    ours = torch.stack([torch.from_numpy(x) for x in [session.prefill(prompt, 0)] + [session.decode(t) for t in continuation]])
    decoder = build_decoder(loaded.config, loaded.weights, max_seq_len=32)
    calibration = TextCodec(loaded.tokenizer_json, None, None).encode(CALIBRATION_TEXT)
    quantize_decoder(decoder, resolve_scheme("int8-dynamic"), calibration=calibration, rotate=True)
    assert decoder.head_mix is not None
    with torch.no_grad():
        eager = torch.cat([Prefill(decoder)(torch.tensor([prompt + continuation]), torch.arange(13), torch.tensor([i]))
                           for i in range(10, 13)])
    assert float((ours - eager).norm() / eager.norm()) < 2e-2


def test_rotating_4_bit_weights_is_refused(tmp_path):
    path, _ = tiny_model_dir(tmp_path, "llama")
    with pytest.raises(EdgeportError, match="int8-dynamic"):
        edgeport.llm.export(path, max_seq_len=16, prefill_chunk=8, quantize="int4-weight", rotate=True)
