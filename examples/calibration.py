"""Calibration data factories for `edgeport export --quantize int8 --calibration SPEC`.

A factory returns an iterable of input tuples shaped like the model's example inputs.

`random_images` is for trying the pipeline quickly and measuring speed ONLY: random
pixels calibrate activation ranges that real images never produce, so the int8 model
it yields has arbitrary accuracy. Calibrate with a few hundred real, preprocessed
inputs from your data set instead (tests/quantize/test_digits_accuracy.py shows the
accuracy real calibration data keeps).
"""

from __future__ import annotations

import torch


def random_images(batches: int = 8) -> list[tuple[torch.Tensor]]:
    """Random normalized 224x224 RGB images for MobileNetV2/ResNet-18 (speed only)."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(1, 3, 224, 224, generator=generator),) for _ in range(batches)]
