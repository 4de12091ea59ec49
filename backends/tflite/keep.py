"""Ops a TFLite-writing backend asks capture to keep whole.

Each is written better undecomposed: linear as one FULLY_CONNECTED instead of
permute + addmm (+ views), attention without the masking-guard ops its
decomposition adds, hardswish as one HARD_SWISH instead of five ops.
"""

import torch

aten = torch.ops.aten

KEEP_OPS = frozenset(
    {
        aten.linear.default,
        aten.scaled_dot_product_attention.default,
        aten.hardswish.default,
    }
)
