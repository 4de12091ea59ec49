"""What the backends' PT2E quantizers read and write on a node: the annotation key
torchao's prepare step looks for, whether a node is already annotated, and a node's
float output (the only outputs a quantizer annotates)."""

from __future__ import annotations

import torch
from torch.fx import Node

ANNOTATION = "quantization_annotation"  # the node.meta key torchao's prepare_pt2e reads


def is_annotated(node: Node) -> bool:
    """Whether a quantizer annotated `node` already (each node gets one owner)."""
    annotation = node.meta.get(ANNOTATION)
    return annotation is not None and annotation._annotated


def quantizes(node: Node) -> bool:
    """Whether `node`'s annotation quantizes an input or its output (a quantizer may
    annotate a node with neither, to keep it float and claim it)."""
    annotation = node.meta.get(ANNOTATION)
    return annotation is not None and bool(annotation.input_qspec_map or annotation.output_qspec is not None)


def float_output(node: Node) -> torch.Tensor | None:
    """`node`'s (first) output value if it is a float32 tensor, else None."""
    val = node.meta.get("val")
    val = val[0] if isinstance(val, (tuple, list)) and val else val
    return val if isinstance(val, torch.Tensor) and val.dtype == torch.float32 else None
