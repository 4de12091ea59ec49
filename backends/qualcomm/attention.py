"""Attention on HTP: quantized as the MatMul, Softmax and MatMul HTP quantizes, and its
rows masked whole given torch's zeros.

The backend keeps ``scaled_dot_product_attention`` whole at capture (support.py
`KEEP_OPS`): torch.onnx writes it as MatMul and Softmax without the ops torch's own
decomposition adds. In a quantized partition that whole op sat between the dequantizes
of q, k, v and the quantize of its output, so HTP ran its insides in fp16
(onnxruntime-qnn 2.7.0's QNN graph dump: every MatMul, Mul and Softmax of it float).
The quantizer expands it first (core/quantize/expand.py) into

    scores = q @ k^T * scale
    scores = scores + bias                                           (a float mask's finite part)
    scores = where(keep, scores, amin(scores, -1) - MASKED_MARGIN)   (masked only)
    out = softmax(scores, -1) @ v
    out = where(any(keep, -1), out, 0)                               (a bool mask only)

each piece quantized as FORMS says, so HTP computes them in integers and the
fake-quantized reference rounds at the same places. ``keep`` is the bool mask, or for
``is_causal`` a constant lower triangle. A float mask is split (`_mask_of`):
transformers' ``where(keep, bias, finfo.min)`` (T5's position bias, a padding mask)
gives its keep and bias; a mask known at export (a stored -inf causal mask, Swin's
relative position bias) gives keep where it is above `MASKING_FILL` and the rest as
bias. A masked score is moved just below its row's
scores rather than to -inf or a large constant (the masked softmax of ExecuTorch's QNN
Llama, examples/qualcomm/oss_scripts/llama/model/static_llama.py): an observer cannot
take -inf, and a constant far below the scores would set the steps of every score. The
last select gives a row masked whole torch's zeros (a causal mask always leaves a row
its first key).

Measured in QNN's HTP simulator (2026-11-28; tests/backends/qualcomm: a LayerNorm, qkv
linear, 2-head attention over 8 tokens, projection and residual; a bool mask hiding 3
keys and the last query's every key), SQNR against float, before (attention whole, fp16)
and now (every op quantized), and the fake-quantized reference's:

    causal  a16w8: 49.1 -> 49.3 dB (reference 49.1)   int8: 36.8 -> 36.6 dB (36.8)
    bool    a16w8: 27.7 -> 49.4 dB (reference 49.4)   int8: 26.7 -> 29.1 dB (29.1)

(the bool mask's 27.7 was the unguarded row, below). With a float mask (2026-11-28, the
zoo's tiny T5 encoder and Swin, tests/zoo/models.py), SQNR against float before (whole,
fp16) and now:

    T5 encoder   a16w8: 31.4 -> 29.5 dB (reference 31.3)   int8: 20.8 -> 21.1 dB
    Swin         a16w8: 38.2 -> 38.0 dB (reference 38.1)   int8: 28.3 -> 28.5 dB

T5's a16w8 loses 1.9 dB in integers: its scores are not scaled down, and HTP's MatMul of
two 16-bit activations is itself off its reference (two linears and the MatMul of their
outputs: HTP 41.5 dB from the reference, the reference 47.2 from float; with a softmax
in the MatMul's place, 63.8 from the reference). Dropout, grouped heads and a float mask
given at run time (not a fill of masked keys) stay whole and float on HTP, as the
quantization report says: its -inf would reach HTP as -65504 (infinities.py), so
"masked" cannot be read off it there.

In a float partition the whole op stays (`masked_rows_guarded`): torch.onnx writes a bool
mask as a finite fill, so its NaN guard never fires, and a row masked whole came back as
the mean of the values, on ONNX Runtime's CPU as on HTP (largest error 0.30 in the test
above). The export adds the select of zeros after it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.fx import Node

from edgeport.fold import module_value
from edgeport.quantize.expand import stored_tensor

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default

# A masked score is set this far below its row's lowest score: its weight is then at most
# exp(-20) ~ 2e-9 of any unmasked one's, and the scores' observed range grows by 20 only.
MASKED_MARGIN = 20.0
# A float mask's entry at or below this masks its key: exp(-10,000) is 0 in every float
# type, whatever the scores. (transformers fills with finfo.min, hand-written models -inf;
# Swin's -100 between windows is kept as a bias.)
MASKING_FILL = -1e4


def expand_attention(node: Node) -> Node | None:
    """Insert before `node` (a ``scaled_dot_product_attention`` without dropout or
    grouped heads) the pieces computing its value; return the last, or None to leave
    it whole."""
    args = _arguments(node)
    mask = _mask_of(args) if args is not None else None
    if mask is None:
        return None
    query, key, value = args["query"], args["key"], args["value"]
    head_dim = query.meta["val"].shape[-1]
    scale = args.get("scale") or 1.0 / math.sqrt(head_dim)
    rank = query.meta["val"].dim()
    graph = node.graph
    with graph.inserting_before(node):
        swap_last = [*range(rank - 2), rank - 1, rank - 2]
        keys_t = graph.call_function(aten.permute.default, (key, swap_last))
        scores = graph.call_function(aten.matmul.default, (query, keys_t))
        scores = graph.call_function(aten.mul.Tensor, (scores, float(scale)))
        if mask.bias is not None:
            scores = graph.call_function(aten.add.Tensor, (scores, stored_tensor(mask.bias, query, "attention_bias")))
        keep = stored_tensor(mask.keep, query, "attention_keep") if mask.keep is not None else None
        if keep is not None:
            lowest = graph.call_function(aten.amin.default, (scores, [-1], True))
            floor = graph.call_function(aten.sub.Tensor, (lowest, MASKED_MARGIN))
            scores = graph.call_function(aten.where.self, (keep, scores, floor))
        probs = graph.call_function(aten._softmax.default, (scores, -1, False))
        out = graph.call_function(aten.matmul.default, (probs, value))
        return _zeros_for_rows_masked_whole(out, keep) if mask.whole_rows_masked else out


@contextlib.contextmanager
def masked_rows_guarded(program: torch.export.ExportedProgram) -> Iterator[None]:
    """Each attention with a bool mask followed by a select of zeros for its rows masked
    whole, for the ONNX export, then put back.

    torch's attention gives such a row zeros; torch.onnx's export (torch 2.13) gave the
    mean of the values (see the module docstring). The select takes the attention's
    name, so the graph's outputs and the placement report read the guarded value."""
    graph = program.graph
    added = []
    for node in [n for n in graph.nodes if n.target == SDPA]:
        args = _named_arguments(node)
        mask = args.get("attn_mask")
        if not isinstance(mask, Node) or mask.meta["val"].dtype != torch.bool:
            continue
        name = node.name
        node._rename(f"{name}_unguarded")
        with graph.inserting_before(node.next):
            guarded = _zeros_for_rows_masked_whole(node, mask)
        guarded._rename(name)
        node.replace_all_uses_with(guarded, delete_user_cb=lambda user: user is not guarded)
        attends = guarded.args[0]
        attends.meta["val"] = aten.any.dim(mask.meta["val"], -1, True)
        guarded.meta["val"] = node.meta["val"]
        for new in (attends, guarded):
            new.meta["stack_trace"] = node.meta.get("stack_trace")
        added.append((node, name, attends, guarded))
    if added:
        program.graph_module.recompile()
    try:
        yield
    finally:
        for node, name, attends, guarded in reversed(added):
            guarded.replace_all_uses_with(node)
            graph.erase_node(guarded)
            graph.erase_node(attends)
            node._rename(name)
        if added:
            program.graph_module.recompile()


def _zeros_for_rows_masked_whole(out: Node, keep: Node) -> Node:
    """``where(any(keep, -1), out, 0)``, inserted at the graph's insertion point:
    torch's attention gives a query that may attend to no key zeros."""
    attends = out.graph.call_function(aten.any.dim, (keep, -1, True))
    return out.graph.call_function(aten.where.ScalarOther, (attends, out, 0.0))


@dataclass(frozen=True)
class _Mask:
    """What an attention's mask does to its scaled scores: `bias` is added, then a key
    where `keep` is False is moved below its row. Each is a node, a value known at
    export (stored on the module when expanded), or None."""

    keep: Node | torch.Tensor | None = None
    bias: Node | torch.Tensor | None = None
    whole_rows_masked: bool = False  # a row may keep no key: torch gives it zeros (bool masks)


def _mask_of(args: dict[str, Any]) -> _Mask | None:
    """The attention's mask as a `_Mask`, or None when it cannot be told apart (a float
    mask computed at run time that is not a fill of masked keys)."""
    mask = args.get("attn_mask")
    if mask is None:
        return _Mask(keep=_causal_keep(args["query"], args["key"])) if args.get("is_causal") else _Mask()
    if mask.meta["val"].dtype == torch.bool:
        return _Mask(keep=mask, whole_rows_masked=True)
    return _filled_mask(mask) or _known_float_mask(mask)


def _filled_mask(mask: Node) -> _Mask | None:
    """``where(keep, bias, fill)`` with a fill that masks (transformers' float masks:
    T5's position bias where a key is kept, finfo.min elsewhere). A row masked whole
    then weighs its keys alike (finfo.min) or is NaN (-inf) in torch; expanded, its
    keys are alike too. A number for `bias` shifts every score alike: it changes
    nothing a softmax reads."""
    while mask.target in (aten.clone.default, aten.alias.default):
        mask = mask.args[0]
    if mask.target != aten.where.self:
        return None
    keep, bias, fill = mask.args
    fill = fill.args[0] if isinstance(fill, Node) and fill.target == aten.scalar_tensor.default else fill
    if not isinstance(fill, (int, float)) or fill > MASKING_FILL or keep.meta["val"].dtype != torch.bool:
        return None
    return _Mask(keep=keep, bias=bias if isinstance(bias, Node) else None)


def _known_float_mask(mask: Node) -> _Mask | None:
    """A float mask whose value is known at export (a model's stored mask, Swin's
    relative position bias), split into the keys it masks and the finite rest."""
    value = module_value(mask)
    if value is None:
        return None
    masked = value <= MASKING_FILL
    if not bool((masked | value.isfinite()).all()):
        return None  # NaN or +inf: nothing to read off it
    if not bool(masked.any()):
        return _Mask(bias=mask)
    bias = torch.where(masked, 0.0, value)
    return _Mask(keep=~masked, bias=bias if bool(bias.any()) else None)


def _causal_keep(query: Node, key: Node) -> torch.Tensor:
    """A (queries, keys) mask keeping key j for query i when j <= i, as ``is_causal`` does."""
    queries, keys = query.meta["val"].shape[-2], key.meta["val"].shape[-2]
    return torch.ones(queries, keys, dtype=torch.bool).tril()


def _arguments(node: Node) -> dict[str, Any] | None:
    """The attention's arguments by name, if it is one this module expands: no
    dropout, no grouped heads, a mask bool if any (see the module docstring)."""
    if node.target != SDPA:
        return None
    args = _named_arguments(node)
    mask = args.get("attn_mask")
    tensors = [args["query"], args["key"], args["value"], *([mask] if mask is not None else [])]
    if args.get("dropout_p") or args.get("enable_gqa"):
        return None
    if not all(isinstance(t, Node) and isinstance(t.meta.get("val"), torch.Tensor) for t in tensors):
        return None
    if args.get("is_causal") and not all(isinstance(t.meta["val"].shape[-2], int) for t in tensors[:2]):
        return None  # the causal mask is a constant of the token counts
    return args


def _named_arguments(node: Node) -> dict[str, Any]:
    names = [a.name for a in SDPA._schema.arguments]
    return {**dict(zip(names, node.args)), **node.kwargs}
