"""The residual-stream rotation (core/llm/rotation.py) on small random Llama-family models:
the Hadamard-based matrices are orthogonal, and the rotated decoder computes the float
function it computed before (the rotation only changes what quantization sees)."""

from __future__ import annotations

import pytest
import torch

from edgeport.llm.loader import load_model
from edgeport.llm.model import Prefill
from edgeport.llm.rotation import orthogonal, rotate_decoder
from edgeport.llm.weights import build_decoder

from test_architectures import ARCHS, tiny_model_dir


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
