"""Large 3x3 convolutions written as Winograd F(2x2, 3x3): when the writer takes that
path, and that it computes the same convolution (odd and non-square sizes, batches,
folded batch norm, fused activation, a residual add after it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeport.backends.tflite.ops import winograd
from tflite_cases import bn_with_stats
from tflite_helpers import lower


class ConvBnRelu(nn.Module):
    def __init__(self, c_in: int, c_out: int, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias)
        self.bn = bn_with_stats(c_out)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return y + x if y.shape == x.shape else y


@pytest.mark.parametrize("c_in, c_out, n, h, w, bias", [
    (64, 64, 1, 56, 56, False),  # ResNet-18's first stage
    (128, 96, 1, 29, 30, True),  # odd height: one extra row of tiles is computed, then cropped
    (64, 64, 2, 27, 27, True),  # a batch: tiles of different images never mix
    (256, 256, 1, 7, 7, False),
])
def test_winograd_matches_eager(c_in, c_out, n, h, w, bias):
    torch.manual_seed(0)
    model = ConvBnRelu(c_in, c_out, bias).eval()
    written, error = lower(model, torch.randn(n, c_in, h, w), winograd=True)
    assert written.ops.get("BATCH_MATMUL") == 1 and "CONV_2D" not in written.ops
    assert error <= 1e-5


def test_without_the_option_it_is_a_plain_conv():
    written, error = lower(ConvBnRelu(64, 64).eval(), torch.randn(1, 64, 28, 28))
    assert written.ops.get("CONV_2D") == 1 and "BATCH_MATMUL" not in written.ops
    assert error <= 1e-5


@pytest.mark.parametrize("weight, stride, pads, dilation, groups, size, fits", [
    ((64, 64, 3, 3), [1, 1], [1, 1], [1, 1], 1, 56, True),
    ((64, 64, 3, 3), [2, 2], [1, 1], [1, 1], 1, 56, False),  # strided: tiles would overlap differently
    ((64, 64, 3, 3), [1, 1], [0, 0], [1, 1], 1, 56, False),
    ((64, 64, 3, 3), [1, 1], [2, 2], [2, 2], 1, 56, False),
    ((64, 1, 3, 3), [1, 1], [1, 1], [1, 1], 64, 56, False),  # depthwise is already cheap
    ((64, 64, 5, 5), [1, 1], [2, 2], [1, 1], 1, 56, False),
    ((32, 32, 3, 3), [1, 1], [1, 1], [1, 1], 1, 112, False),  # too few channels to pay for the transforms
    ((64, 64, 3, 3), [1, 1], [1, 1], [1, 1], 1, 14, False),  # too little work
])
def test_fits_only_where_it_pays(weight, stride, pads, dilation, groups, size, fits):
    in_shape = (1, weight[1] * groups, size, size)
    assert winograd.fits(in_shape, weight, stride, pads, dilation, groups) is fits
