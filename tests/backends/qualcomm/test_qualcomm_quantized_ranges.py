"""What the qualcomm quantizer's ranges mean for the fake-quantized reference, in torch
(no QNN compile): the ranges HTP is given are the reference's, so a range that cannot
hold a value makes both wrong alike, and only a torch check catches it.

- An RMS norm stays float inside: its square, quantized per tensor, took its range from a
  massive activation at one position (SmolLM2-135M: 22,500 from layer 12), so every
  other position's square rounded to 0 and the norm returned ~x / sqrt(eps) there.
- A method's 16-bit outputs keep headroom beyond their calibrated range: an LLM's top
  logits, the values greedy decoding picks, went above a prefill head's range
  calibrated on four calls (SmolLM2-135M a16w8: every top logit clipped to one value).
- A concatenation rounds each input once: HTP writes the op before it (a relu) straight
  into the Concat's encoding, so a reference quantizing that input at a scale of its own
  and again at the cat's rounded twice where HTP rounds once (int8_cat: 3 steps apart).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeport.quantize.scheme import resolve_scheme


def fake_quantized(model: nn.Module, example: tuple, batches: list[tuple], scheme: str) -> torch.fx.GraphModule:
    """The converted PT2E graph of ``model`` for qualcomm alone: the reference a program
    exported with `keep_reference` runs."""
    from edgeport.api import resolve_backends
    from edgeport.backends.qualcomm import QualcommBackend
    from edgeport.quantize import quantize_method
    from edgeport.testing import registry_for

    selected, options = resolve_backends(["qualcomm"], None, registry_for(QualcommBackend()))
    quantized = quantize_method(model, example, None, selected, options, resolve_scheme(scheme), batches)
    assert set(quantized.placement.summary()) == {"qualcomm"}
    return quantized.program.module()


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 32)

    def forward(self, x):
        return self.proj(x)


def test_a_sixteen_bit_output_above_its_calibrated_range_is_not_clipped():
    torch.manual_seed(0)
    head = Head().eval()
    calibration = [(torch.rand(4, 16) * 2 - 1,) for _ in range(4)]
    calibration[0][0][0] = torch.tensor([1.0, -1.0] * 8)  # the input's range: [-1, 1]
    with torch.no_grad():
        top = max(float(head(*b).max()) for b in calibration)
        x = torch.sign(head.proj.weight[:4])  # inside the input's range, each row a largest output
        want = head(x)
        got = fake_quantized(head, calibration[0], calibration, "a16w8")(x)
    assert float(want.max()) > top * 1.2
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2 * float(want.abs().max()))
    assert int(got.argmax()) == int(want.argmax())


class NormThenLinear(nn.Module):
    """A decoder's residual add, then an RMS norm in Hugging Face's form and a linear."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(width) + 0.5)
        self.proj = nn.Linear(width, 32, bias=False)

    def forward(self, residual, update):
        h = residual + update
        normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
        return self.proj(normed * self.gamma)


def _with_massive_activation(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(8, 64) residual and update, the first position carrying one channel of 2,000 (a
    decoder's attention-sink position), the others ~N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    residual, update = torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g) * 0.1
    residual[0, 5] = 2000.0
    return residual, update


def test_an_rms_norm_after_a_massive_activation_keeps_every_position():
    torch.manual_seed(0)
    model = NormThenLinear().eval()
    calibration = [_with_massive_activation(seed) for seed in range(4)]
    x = _with_massive_activation(10)
    with torch.no_grad():
        want = model(*x)
        got = fake_quantized(model, calibration[0], calibration, "a16w8")(*x)
    # The positions without the massive value: what goes wrong when the square is
    # quantized (error 0.14 to 0.35 there). What remains is the residual add's own per-tensor
    # uint16 steps (a span of 2,000: 0.03) on values ~1.
    error = (got[1:] - want[1:]).norm(dim=-1) / want[1:].norm(dim=-1)
    assert float(error.max()) < 0.05


class ReluCat(nn.Module):
    def forward(self, a, b):
        return torch.cat([torch.relu(a), torch.relu(b)], dim=1)


def test_a_concatenation_rounds_each_input_once():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(1, 8, 6, 6, generator=g), torch.randn(1, 8, 6, 6, generator=g)) for _ in range(4)]
    a, b = torch.randn(1, 8, 6, 6, generator=g), torch.randn(1, 8, 6, 6, generator=g)
    graph = fake_quantized(ReluCat().eval(), batches[0], batches, "int8")
    quantizes = graph.graph.find_nodes(op="call_function", target=torch.ops.quantized_decomposed.quantize_per_tensor.default)
    parameters = {n.args[0].name: (float(n.args[1]), int(n.args[2])) for n in quantizes}
    assert parameters["relu"] == parameters["relu_1"] == parameters["cat"]  # each relu had its own
    with torch.no_grad():
        a, b = (torch.fake_quantize_per_tensor_affine(x, *parameters[name], 0, 255) for x, name in ((a, "a"), (b, "b")))
        once = torch.fake_quantize_per_tensor_affine(torch.cat([torch.relu(a), torch.relu(b)], 1), *parameters["cat"], 0, 255)
        torch.testing.assert_close(graph(a, b), once, rtol=0, atol=1e-6)
