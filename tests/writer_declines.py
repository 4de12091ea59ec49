"""Which shared conformance cases (edgeport.testing) the TFLite writer declines, and why.

The cpu and mediatek backends write TFLite with the same writer, so both leave these
nodes to portable torch with the writer's reason (case -> op -> words of its reason);
every other node of every case they take. A lone reshape the writer's decline strands
is left by the partition rule, which tests accept separately.
"""

from __future__ import annotations

_CEIL = "ceil_mode changes the output size"
_EXCLUDE_PAD = "count_include_pad=False with padding"
_3D_TRANSPOSED = "transposed 3d convolution (TFLite's CONV_3D is neither"
_3D_GROUPED = "grouped 3d convolution (TFLite's CONV_3D is neither"
_NO_LOWERING = "no TFLite lowering for"

WRITER_DECLINES: dict[str, dict[str, str]] = {
    "avg_pool2d_ceil": {"aten.avg_pool2d.default": _CEIL},
    "avg_pool2d_exclude_pad": {"aten.avg_pool2d.default": _EXCLUDE_PAD},
    "avg_pool2d_exclude_pad_ceil": {"aten.avg_pool2d.default": _CEIL},
    "avg_pool2d_divisor_override": {"aten.avg_pool2d.default": "divisor_override"},
    "avg_pool1d_ceil": {"aten.avg_pool2d.default": _CEIL},
    "avg_pool1d_exclude_pad": {"aten.avg_pool2d.default": _EXCLUDE_PAD},
    "max_pool2d_ceil": {"aten.max_pool2d_with_indices.default": _CEIL},
    "max_pool2d_dilated": {"aten.max_pool2d_with_indices.default": "dilated pooling"},
    "max_pool2d_indices": {"aten.max_pool2d_with_indices.default": "output 1 is read"},
    "pool3d": {"aten.avg_pool3d.default": "no TFLite lowering",
               "aten.max_pool3d_with_indices.default": "no TFLite lowering"},
    "conv_transpose3d": {"aten.convolution.default": _3D_TRANSPOSED},
    "conv_transpose3d_groups": {"aten.convolution.default": _3D_TRANSPOSED},
    "conv_transpose3d_depthwise": {"aten.convolution.default": _3D_TRANSPOSED},
    "conv_transpose3d_unequal_padding": {"aten.convolution.default": _3D_TRANSPOSED},
    "conv_transpose3d_output_padding": {"aten.convolution.default": _3D_TRANSPOSED},
    "conv3d_groups_strided": {"aten.convolution.default": _3D_GROUPED},
    "conv_transpose2d_groups_dilation": {"aten.convolution.default": "dilated transposed convolution"},
    # Three positions at once: TFLite's DYNAMIC_UPDATE_SLICE writes one.
    "buffer_write_read": {"aten.index_put.default": "only one position is a DYNAMIC_UPDATE_SLICE"},
    # A causal attention's mask is a constant of the sequence length: it cannot resize.
    "dynamic_tokens_attention": {"aten.scaled_dot_product_attention.default": "depends on the size of a dynamic dim"},
}

# The writer alone declines these too, but no backend hands it the node: a program writes
# a state buffer's rows itself (core/state_rows.py).
WRITER_ALONE_DECLINES: dict[str, dict[str, str]] = {
    "buffer_row_update": {"aten.index_put.default": "only one position is a DYNAMIC_UPDATE_SLICE"},
}

PARTITION_RULE = "partition holds only ops the backend never takes alone"


def writer_reason_expected(case: str, op: str, reason: str) -> bool:
    """True when ``reason`` for ``op`` in ``case`` is the writer's listed decline."""
    words = WRITER_DECLINES.get(case, {}).get(op)
    return words is not None and words in reason
