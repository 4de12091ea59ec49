"""A quantized op's bias as integer kernels add it: int32 at input scale x weight scale.

XNNPACK's QS8 kernels, TFLite's int8 FULLY_CONNECTED and CONV_2D, and QNN HTP add
the bias in their int32 accumulator, in steps of (input scale x weight scale) of the
channel. The backends' quantizers annotate the bias with `bias_spec` so the
fake-quantized reference rounds (and clips) it as the kernel does. Left float, the
reference hid the rounding: a Linear whose row 0 is one weight of 1000.0, over inputs
spanning -102 to 114 (input scale 0.85), adds its bias in steps of 6.7 in that row,
so a bias of 3.0 ran as 0 on the cpu, and `edgeport check` blamed the backend
(max rel 0.05) for what int8 computes.

`BiasFitObserver` keeps the bias inside int32: see its docstring.

Imports torchao: import this module only when quantizing (the backends' quantizer
modules do).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import PerChannelMinMaxObserver
from torchao.quantization.pt2e.quantizer import DerivedQuantizationSpec

INT32_RANGE = (-(2**31), 2**31 - 1)


class BiasFitObserver(PerChannelMinMaxObserver):
    """Per-channel weight parameters whose scale is large enough for the channel's bias.

    A channel whose weights are all zero (pruned) or tiny gets a weight scale near the
    observer's eps; times a fine input scale (16-bit activations) the step is so small
    that the bias no longer fits in int32 and is clipped: a qualcomm a16w8
    Linear(16, 4) with row 0 zero and bias 1.0 gave -0.018 for 1.0. So each channel's
    scale is at least |bias| / (input scale x (2^31 - 1)). Raising it only coarsens
    the steps of weights already far smaller than the bias they sit next to. QAT's
    fake quantizers learn their ranges and are not given this floor.
    """

    def fit_bias(self, input_observer: Any, bias_abs: torch.Tensor) -> None:
        vars(self)["_fit"] = (input_observer, bias_abs)  # not a submodule: the observer belongs to the graph

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale, zero_point = super().calculate_qparams()
        fit = vars(self).get("_fit")
        if fit is None:
            return scale, zero_point
        input_observer, bias_abs = fit
        input_scale, _ = input_observer.calculate_qparams()
        floor = bias_abs.to(scale.dtype) / (input_scale.to(scale.dtype) * INT32_RANGE[1]) * (1 + 2**-10)
        return torch.maximum(scale, floor), zero_point


def bias_spec(activation: Node, weight: Node, node: Node) -> DerivedQuantizationSpec:
    """int32 at (input scale x weight scale) per output channel, zero point 0, for the
    bias `node` adds to its product of `activation` and `weight`."""

    def derive(observers: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        input_scale, _ = observers[0].calculate_qparams()
        weight_scale, _ = observers[1].calculate_qparams()
        scale = (input_scale * weight_scale).to(torch.float32)
        return scale, torch.zeros_like(scale, dtype=torch.int32)

    return DerivedQuantizationSpec([(activation, node), (weight, node)], derive, torch.int32, *INT32_RANGE,
                                   torch.per_channel_symmetric, ch_axis=0)


def fit_biases(model: GraphModule, biased: list[tuple[Node, Node, Node, Node]], observers: dict) -> None:
    """Hand each biased op's weight observer its input's observer and its bias, for the
    quantizer's `prepare_obs_or_fq_callback`. `biased`: (input, weight, bias, op) of
    each op annotated with `bias_spec`; a bias that is not a stored constant (one
    folded from others) gets no floor.

    Empties `biased`: its nodes hold fake tensors, and a QAT model keeps its quantizers
    (copying the model to export it failed on them: "Cannot access data pointer")."""
    for activation, weight, bias, node in biased:
        weights, inputs = observers.get((weight, node)), observers.get((activation, node))
        if isinstance(weights, BiasFitObserver) and inputs is not None and bias.op == "get_attr":
            weights.fit_bias(inputs, operator.attrgetter(bias.target)(model).detach().abs())
    biased.clear()
