"""Calibration data factories for `edgeport export --quantize int8 --calibration SPEC`.

A factory returns an iterable of input tuples shaped like the model's example inputs.

`random_images`, `random_token_ids` and `random_llama_token_ids` are for trying the pipeline quickly and measuring
speed ONLY: random pixels (or tokens) calibrate activation ranges that real inputs never
produce, so the int8 model they yield has arbitrary accuracy. Calibrate with a few hundred real, preprocessed
inputs from your data set instead (tests/quantize/test_digits_accuracy.py shows the
accuracy real calibration data keeps).
"""

from __future__ import annotations

import torch


def random_images(batches: int = 8) -> list[tuple[torch.Tensor]]:
    """Random normalized 224x224 RGB images for MobileNetV2/ResNet-18 (speed only)."""
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(1, 3, 224, 224, generator=generator),) for _ in range(batches)]


def random_token_ids(batches: int = 8) -> list[tuple[torch.Tensor]]:
    """Random token ids for examples' transformer_encoder (vocabulary 1000, 32 tokens):
    speed and placement only, as random_images."""
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 1000, (1, 32), generator=generator),) for _ in range(batches)]


def random_llama_token_ids(batches: int = 8) -> list[tuple[torch.Tensor]]:
    """Random token ids for examples' tiny_llama (vocabulary 256, 16 tokens): speed and
    placement only, as random_images."""
    generator = torch.Generator().manual_seed(2)
    return [(torch.randint(0, 256, (1, 16), generator=generator),) for _ in range(batches)]
