"""coreml's int4-weight: 4-bit blocks with a scale and an offset each, and gather tables in int8.

coremltools' own int4 (`linear_quantize_weights`, linear_symmetric, per block) rounds each
block of 32 inputs to the 15 steps of ``max|w| / 7`` around zero. That is far off for a
model whose weights already sit on a 4-bit grid that is not centred on zero: a GGUF
Q4_1 file stores each block of 32 as ``d·q + m`` (q in 0..15, a scale d and a minimum m),
and rounding those values again to a symmetric grid moves most of them. The LLM tests'
passage through SmolLM2 (Q4_1), weights expanded in torch and computed in fp32
(bench/llm_npu.py, 2026-11-27): coremltools' symmetric int4 keeps 52.3% of fp32's top-1
tokens (perplexity 29.64 -> 52.2); blocks with a scale and a float offset keep 82.3%,
and with the embedding table in int8 rather than int4, 98.3% (perplexity 29.69).

So edgeport compresses int4-weight itself, with the one op iOS 18 has for it,
``constexpr_blockwise_shift_scale`` (output = scale · (data - offset)):

- a weight read by a ``gather`` (an embedding table, and the head tied to it) is int8 per
  row, symmetric: a token's row is read whole, and int4 rows cost the most accuracy;
- any other weight of rank 2 or more whose axis 1 (a linear's or conv's inputs) splits
  into blocks of ``group_size``: uint4 per block, with an fp16 scale ``(max - min) / 15``
  and an fp16 offset ``-min / scale`` (Q4_1's grid: such a file's weights are kept, to
  fp16 rounding of the offset). The offset costs 16 more bits a block than the
  symmetric form: 5 bits a weight instead of 4.5;
- anything else stays fp16: a constant read by anything but a linear, matmul, conv or
  gather (a mask, a table multiplied in), weights of 2,048 elements or fewer, and the
  program's buffers (compress.py).

The op's specification allows fp16 offsets (OffsetT: int4, uint4, int8, uint8, fp16,
fp32; coremltools' iOS18 compression op definitions); coremltools' own quantizer emits
integer ones only. No Mac is here to run the result: on Linux the package is validated
and its weights expanded and compared (tests/llm/test_llm_npu.py).
"""

from __future__ import annotations

from typing import Any, Collection

import numpy as np

# An offset past 64 steps rounds (fp16: 1/16 apart there) by more than 1/32 of a step: such a
# block, far from zero, has its range widened to zero instead (Q4_1 blocks straddle zero).
OFFSET_LIMIT = 64.0
# The ops that read a constant as weights. A constant with any other reader (a mask added
# to scores, a table multiplied in) is not a weight: it stays as it is.
WEIGHT_READERS = frozenset({"linear", "matmul", "conv", "conv_transpose", "gather"})


def compress(mlmodel: Any, group_size: int, keep: Collection[str], threshold: int) -> Any:
    """``mlmodel`` with its weights compressed as this module's docstring says; constants
    named in ``keep`` and those of ``threshold`` elements or fewer stay as they are."""
    from coremltools.models.utils import _apply_graph_pass

    return _apply_graph_pass(mlmodel, _pass(group_size, frozenset(keep), threshold),
                             spec_version=mlmodel.get_spec().specificationVersion)


def _pass(group_size: int, keep: frozenset[str], threshold: int) -> Any:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass

    class Int4Blocks(AbstractGraphPass):
        def apply(self, prog: Any) -> None:
            for function in prog.functions.values():
                with function:
                    for op in list(function.operations):
                        compressed = _compressed(op, group_size, keep, threshold)
                        if compressed is None:
                            continue
                        data, scale, offset = compressed
                        new = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset,
                                                                 before_op=op, name=op.name + "_quantized")
                        op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0],
                                                                        new_var=new)
                        op.enclosing_block.remove_ops([op])

    return Int4Blocks()


def _compressed(op: Any, group_size: int, keep: frozenset[str], threshold: int) -> tuple | None:
    """(data, scale, offset) for a weight constant, or None to leave ``op`` as it is."""
    value = op.outputs[0].val if op.op_type == "const" else None
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim < 2 or value.size <= threshold:
        return None
    if op.name in keep or op.name.removesuffix("_to_fp16") in keep or not np.isfinite(value).all():
        return None
    readers = {reader.op_type for reader in op.outputs[0].child_ops}
    if not readers or not readers <= WEIGHT_READERS:
        return None
    weight = value.astype(np.float32)
    if "gather" in readers:
        return int8_rows(weight) + (None,)
    if weight.shape[1] % group_size:
        return None
    return uint4_blocks(weight, group_size)


def int8_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row (axis 0): the values and an fp16 scale per row, shaped to
    the weight's rank as the op wants."""
    rows = weight.reshape(weight.shape[0], -1)
    scale = (np.abs(rows).max(1, keepdims=True) / 127).astype(np.float16)
    scale[scale == 0] = 1
    data = np.clip(np.round(rows / scale.astype(np.float32)), -127, 127).astype(np.int8)
    return data.reshape(weight.shape), scale.reshape((weight.shape[0],) + (1,) * (weight.ndim - 1))


def uint4_blocks(weight: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint4 in blocks of ``group_size`` along axis 1, each with an fp16 scale and offset:
    ``weight ≈ scale · (data - offset)``, the offset ``-min / scale``."""
    from coremltools.converters.mil.mil import types

    shape = (weight.shape[0], weight.shape[1] // group_size, group_size) + weight.shape[2:]
    blocks = weight.reshape(shape)
    low, high = blocks.min(2, keepdims=True), blocks.max(2, keepdims=True)
    scale = (high - low) / 15
    far = np.abs(low) > OFFSET_LIMIT * scale  # a block far from zero: its offset would not fit fp16 finely
    low, high = np.where(far, np.minimum(low, 0), low), np.where(far, np.maximum(high, 0), high)
    scale = ((high - low) / 15).astype(np.float16)
    scale[scale == 0] = 1  # a constant block: every value is the offset's
    offset = (-low / scale.astype(np.float32)).astype(np.float16)
    data = np.clip(np.round(blocks / scale.astype(np.float32) + offset.astype(np.float32)), 0, 15)
    per_block = scale.shape[:2] + scale.shape[3:]
    return (data.astype(types.np_uint4_dtype).reshape(weight.shape), scale.reshape(per_block),
            offset.reshape(per_block))
