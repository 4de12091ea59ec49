"""scaled_dot_product_attention kept whole: two BATCH_MATMULs around a SOFTMAX.

Kept undecomposed (see `KEEP_OPS`), attention needs no masking-guard ops; the
decomposed form still lowers through the elementwise and matmul tables.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..lowering import FLOAT, IsConst, aten, lowering, meta, shape
from .matmul import batch_matmul
from .reduce import softmax_value

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def _sdpa_args(node: Node) -> dict:
    args = dict(zip(_SDPA_ARGS, node.args))
    args.update(node.kwargs)
    return args


def _check_sdpa(node: Node, is_const: IsConst) -> str | None:
    a = _sdpa_args(node)
    if a.get("dropout_p", 0.0):
        return "dropout_p > 0"
    if a.get("enable_gqa", False):
        return "enable_gqa (repeat the key/value heads before attention)"
    q, k = shape(a["query"]), shape(a["key"])
    if q[:-2] != k[:-2]:
        return f"query batch dims {q[:-2]} differ from key batch dims {k[:-2]}"
    mask = a.get("attn_mask")
    if mask is not None and meta(mask).dtype not in (torch.float32, torch.bool):
        return f"attention mask dtype {meta(mask).dtype}"
    return None


def _sdpa_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    """Two BATCH_MATMULs around a SOFTMAX; a mask is ADDed, a runtime bool mask first
    made additive by a SELECT_V2."""
    a = _sdpa_args(node)
    ops = {"MUL", "BATCH_MATMUL", "SOFTMAX"}
    mask = a.get("attn_mask")
    if a.get("is_causal", False) or mask is not None:
        ops.add("ADD")
    if isinstance(mask, Node) and meta(mask).dtype == torch.bool and not is_const(mask):
        ops.add("SELECT_V2")
    return frozenset(ops)


@lowering(
    aten.scaled_dot_product_attention.default, writes=_sdpa_writes, dtypes=FLOAT | {torch.bool}, check=_check_sdpa
)
def sdpa(em: Emitter, node: Node) -> Value:
    """softmax(q k^T * scale + mask) v."""
    a = _sdpa_args(node)
    q, k, v = em.value(a["query"]), em.value(a["key"]), em.value(a["value"])
    scale = a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    rank = len(q.shape)
    length, source = q.shape[-2], k.shape[-2]

    q = em.elementwise("MUL", [q, scale], q.shape, torch.float32, node.name + "/q_scaled")
    swap = layout.identity(rank - 2) + (rank - 1, rank - 2)
    k_t = Value(k.tensor, layout.apply(swap, k.shape), k.dtype, layout.after_permute(k.perm, swap))
    scores = batch_matmul(em, q, k_t, node.name + "/scores")

    mask = _additive_mask(em, a, length, source, node.name + "/mask")
    if mask is not None:
        shape = torch.broadcast_shapes(scores.shape, tuple(mask.shape))
        scores = em.elementwise("ADD", [scores, mask], shape, torch.float32, node.name + "/masked")
    probs = softmax_value(em, node.name + "/probs", scores, len(scores.shape) - 1)
    return batch_matmul(em, probs, v, node.name)


def _additive_mask(em: Emitter, a: dict, length: int, source: int, name: str) -> torch.Tensor | Value | None:
    """The mask as something to add to the scores (a constant or a Value, written as `name`), or None."""
    if a.get("is_causal", False):
        keep = torch.ones(length, source, dtype=torch.bool).tril()
        return torch.zeros(length, source).masked_fill(~keep, -math.inf)
    mask = a.get("attn_mask")
    if mask is None:
        return None
    m = em.arg(mask)
    if meta(mask).dtype != torch.bool:
        return m
    if isinstance(m, torch.Tensor):
        return torch.zeros(m.shape).masked_fill(~m, -math.inf)
    dtypes = [torch.bool, torch.float32, torch.float32]
    return em.elementwise("SELECT_V2", [m, 0.0, -math.inf], m.shape, torch.float32, name, dtypes)
