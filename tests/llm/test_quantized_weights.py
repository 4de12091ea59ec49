"""The LLM's quantized linears (core/llm/quantized.py), without exporting anything: weights
that came from a Q4_1 file (groups of 32, a float16 step and minimum each) round to
themselves, a linear reads them through the same sum the program computes, and an
input's outlier channels kept in float spare the other channels' per-token rounding."""

from __future__ import annotations

import torch

from edgeport.llm.quantized import QuantizedWeight, linear


def q4_1_weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A weight as llama.cpp's Q4_1 stores it: per group of 32, step·q + minimum with
    q in 0..15 and step and minimum float16 (different per group, so a grid per row
    or a symmetric grid per group cannot hold it)."""
    g = torch.Generator().manual_seed(seed)
    groups = cols // 32
    step = (torch.rand(rows, groups, 1, generator=g) * 0.05 + 1e-3).half().float()
    minimum = (-8 * step - torch.rand(rows, groups, 1, generator=g) * 0.1).half().float()
    q = torch.randint(0, 16, (rows, groups, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # each group spans its whole range, as llama.cpp rounds it
    return (step * q + minimum).reshape(rows, cols)


def test_a_q4_1_weight_rounds_to_itself_in_4_bit_groups():
    w = q4_1_weight(96, 128)
    q = QuantizedWeight.of(w, 4, 32)
    assert q.values.min() >= -8 and q.values.max() <= 7
    offsets = q.offset.repeat_interleave(32, dim=1)
    rebuilt = q.values.float() * q.scale.repeat_interleave(32, dim=1) + offsets
    assert torch.allclose(rebuilt, w, rtol=0, atol=1e-6)


def test_a_linear_with_4_bit_groups_adds_the_offsets_through_group_sums():
    from edgeport.quantize.flow import quant_ops

    quant_ops()
    w, x = q4_1_weight(64, 96, seed=1), torch.randn(5, 96)
    out = linear(x, QuantizedWeight.of(w, 4, 32))
    # x is quantized per token inside: close to the float product, far closer than the
    # symmetric grid's offset-free rounding would be
    error = (out - x @ w.T).norm() / (x @ w.T).norm()
    assert error < 0.02, error


def test_outlier_channels_kept_in_float_make_the_per_token_rounding_of_the_rest_fine():
    from edgeport.quantize.flow import quant_ops

    quant_ops()
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(48, 64, generator=g), torch.randn(6, 64, generator=g)
    x[:, [3, 40]] *= 200.0  # two channels carry outliers, token after token
    exact = x @ w.T
    plain = QuantizedWeight.of(w, 8)
    split = QuantizedWeight.of(w, 8)
    split.split_outliers(torch.tensor([3, 40]), w)
    error = lambda q: float((linear(x, q) - exact).norm() / exact.norm())  # noqa: E731
    assert error(split) < error(plain) / 5, (error(split), error(plain))


def test_an_outlier_split_that_takes_the_norms_gamma_in_computes_the_same_linear():
    from edgeport.llm.model import norm_linear, rms_norm
    from edgeport.quantize.flow import quant_ops

    quant_ops()
    g = torch.Generator().manual_seed(3)
    w, h, gamma = torch.randn(48, 64, generator=g), torch.randn(6, 64, generator=g), torch.rand(64, generator=g) + 0.5
    h[:, [3, 40]] *= 50.0
    separate, folded = QuantizedWeight.of(w, 8), QuantizedWeight.of(w, 8)
    separate.split_outliers(torch.tensor([3, 40]), w)
    folded.split_outliers(torch.tensor([3, 40]), w)
    folded.outliers.fold_gamma(gamma)
    reference = linear(rms_norm(h, gamma, 1e-5), separate)
    assert torch.allclose(norm_linear(h, gamma, 1e-5, folded), reference, rtol=1e-5, atol=1e-5)
    assert torch.equal(norm_linear(h, gamma, 1e-5, separate), reference)  # unfolded: the gamma MUL as before


def test_moving_the_down_projections_outlier_channels_last_keeps_the_decoders_function(tmp_path):
    from edgeport.llm.calibration import Observed
    from edgeport.llm.loader import load_model
    from edgeport.llm.model import Prefill
    from edgeport.llm.quantized import OUTLIER_CHANNELS, _move_down_outliers_last, _replace
    from edgeport.llm.weights import build_decoder

    from tiny_llms import tiny_model_dir

    path, _ = tiny_model_dir(tmp_path, "llama")
    decoder = build_decoder(load_model(path).config, load_model(path).weights, max_seq_len=16)
    tokens, positions, last = torch.tensor([[3, 4, 5, 6, 7]]), torch.arange(5), torch.tensor([4])
    with torch.no_grad():
        before = Prefill(decoder)(tokens, positions, last)
    layer = decoder.layers[0]
    for name in ("gate_up", "down"):
        _replace(layer, name, Observed(getattr(layer, name)))
    peak = torch.rand(layer.down.peak.numel(), generator=torch.Generator().manual_seed(4))
    layer.down.peak = peak.clone()
    _move_down_outliers_last(layer)
    assert torch.equal(layer.down.peak[-OUTLIER_CHANNELS:], peak[peak.topk(OUTLIER_CHANNELS).indices.sort().values])
    for name in ("gate_up", "down"):
        _replace(layer, name, getattr(layer, name).weight)
    with torch.no_grad():
        after = Prefill(decoder)(tokens, positions, last)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5)


def test_a_down_projection_whose_input_peaks_tie_still_keeps_its_outliers_last(tmp_path):
    """Most of layer 0's MLP channels are silent (their gate and up rows zero), so the down
    projection's input peaks tie at 0 and the largest channels are not one set: the
    channels moved last are the ones kept in float, whichever the tie-break chose."""
    from edgeport.llm.calibration import TEXT
    from edgeport.llm.loader import load_model
    from edgeport.llm.quantized import OUTLIER_CHANNELS, QuantizedWeight, quantize_decoder
    from edgeport.llm.text import TextCodec
    from edgeport.llm.weights import build_decoder
    from edgeport.quantize import resolve_scheme

    from tiny_llms import tiny_model_dir

    path, _ = tiny_model_dir(tmp_path, "llama")
    loaded = load_model(path)
    decoder = build_decoder(loaded.config, loaded.weights, max_seq_len=16)
    hidden = loaded.config.intermediate_size
    with torch.no_grad():
        for rows in (slice(3, hidden), slice(hidden + 3, 2 * hidden)):  # gate, up
            decoder.layers[0].gate_up[rows] = 0.0
    calibration = TextCodec(loaded.tokenizer_json, None, None).encode(TEXT)[:16]
    quantize_decoder(decoder, resolve_scheme("int8-dynamic"), calibration=calibration)
    down = decoder.layers[0].down
    assert isinstance(down, QuantizedWeight) and down.outliers.tail == OUTLIER_CHANNELS
