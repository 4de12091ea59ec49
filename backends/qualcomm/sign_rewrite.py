"""A float Sign of a value clipped to fp16's range: QNN HTP's Sign is 0 past it.

QNN HTP (onnxruntime-qnn 2.7.0, QNN's HTP simulator) computes float ops in fp16, and
a value past fp16's largest (65504), ±inf included, is no number there: its Sign is 0
(torch: ±1), and so are its comparisons (``x > 0`` and ``x == x`` are false for inf
and for 70000). A Clip saturates it rightly (``clamp(inf, -60000, 60000)`` is 60000 on
HTP), so ``Sign(Clip(x, -65504, 65504))`` is torch's sign for every x: what fp16 holds
is unchanged, the rest reaches Sign as ±65504. (A value below fp16's smallest,
|x| < 6e-8, reads as 0 there, as it does for every float op on HTP.)

A NaN enters HTP as +inf does, 131008 (docs/coverage.md, "NaN and infinity"), so no
form gives torch's answer for both: its sign is now 1 (torch: 0; HTP's Sign gave 0).
A run with a NaN input is warned of (backend.py `said_nan`); one with an infinity is
not, and is now right.
"""

from __future__ import annotations

from typing import Any

FP16_MAX = 65504.0
# onnx.TensorProto's element types of the floats HTP computes Sign in
_FLOAT_TYPES = {1: "float32", 10: "float16"}


def clip_float_signs(model: Any) -> int:
    """Put a Clip to ±`FP16_MAX` before every float ``Sign`` node, in place (an
    onnx.ModelProto); return how many."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    types = {value.name: value.type.tensor_type.elem_type
             for value in (*graph.input, *graph.value_info, *graph.output)}
    clipped = 0
    for position in reversed(range(len(graph.node))):
        sign = graph.node[position]
        dtype = _FLOAT_TYPES.get(types.get(sign.input[0], 0)) if sign.op_type == "Sign" else None
        if dtype is None:
            continue
        tag = sign.output[0] + "_in_fp16"
        bounds = [numpy_helper.from_array(np.array(value, dtype=dtype), f"{tag}_{name}")
                  for name, value in (("low", -FP16_MAX), ("high", FP16_MAX))]
        graph.initializer.extend(bounds)
        clip = helper.make_node("Clip", [sign.input[0], *(b.name for b in bounds)], [tag], name=tag)
        clip.metadata_props.extend(sign.metadata_props)  # the aten sign it came from (provenance.py)
        sign.input[0] = tag
        graph.node.insert(position, clip)
        clipped += 1
    return clipped
