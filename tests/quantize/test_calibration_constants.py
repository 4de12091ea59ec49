"""Calibration observes a constant (a weight) on the first batch only: the ranges it
gives are those of observing it on every batch, and a buffer the model writes (a KV
cache) is no constant, so it is observed on every batch."""

from __future__ import annotations

import torch
from torch import nn

from edgeport.quantize.calibration import calibrate, constant_observers

aten = torch.ops.aten


class Cached(nn.Module):
    """A linear, then an add of a buffer the model writes on every call (a cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))
        self.register_buffer("cache", torch.zeros(1, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.weight) + self.cache
        self.cache.copy_(y)
        return y


def _prepared():
    from torchao.quantization.pt2e import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

    class EveryInput(Quantizer):
        """Observes every input of each linear and add, constants and the cache included."""

        def annotate(self, model):
            spec = QuantizationSpec(torch.uint8, MinMaxObserver.with_args(dtype=torch.uint8), 0, 255,
                                    torch.per_tensor_affine)
            for node in model.graph.nodes:
                if node.target in (aten.linear.default, aten.add.Tensor):
                    inputs = {a: spec for a in node.args if isinstance(a, torch.fx.Node)}
                    node.meta["quantization_annotation"] = QuantizationAnnotation(inputs, spec, _annotated=True)
            return model

        def validate(self, model):
            pass

    torch.manual_seed(0)
    program = torch.export.export(Cached(), (torch.randn(1, 4),), strict=False)
    return prepare_pt2e(program.module(), EveryInput())


def _ranges(model) -> dict[str, tuple[float, float]]:
    return {name: (float(m.min_val), float(m.max_val)) for name, m in model.named_modules()
            if hasattr(m, "min_val") and m.min_val.numel()}


def test_a_weight_is_observed_once_with_the_ranges_of_every_batch():
    batches = [(torch.randn(1, 4) * (i + 1),) for i in range(5)]
    skipping, everywhere = _prepared(), _prepared()
    observers = constant_observers(skipping)
    assert len(observers) == 1  # the weight's; not the cache's (both are attributes of the module)
    calibrate(skipping, batches)
    with torch.no_grad():
        for batch in batches:  # every observer on every batch
            everywhere(*batch)
    assert _ranges(skipping) == _ranges(everywhere) and len(_ranges(skipping)) >= 4
    assert "forward" not in vars(observers[0])  # observing again after calibration


def test_the_written_cache_is_observed_on_every_batch():
    """The cache's observer sees each batch's cache: its range grows past the first batch's."""
    model = _prepared()
    calibrate(model, [(torch.ones(1, 4),)])
    first = _ranges(model)
    calibrate(model, [(torch.ones(1, 4) * 10,)] * 3)
    grown = [name for name, (low, high) in _ranges(model).items() if (low, high) != first[name]]
    assert len(grown) >= 3  # the input, the cache, the sum (not the weight)
