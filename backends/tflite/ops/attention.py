"""scaled_dot_product_attention kept whole: two BATCH_MATMULs around a SOFTMAX.

Kept undecomposed (see `KEEP_OPS`), attention needs no masking-guard ops; the
decomposed form still lowers through the elementwise and matmul tables.

A boolean mask computed at run time (a padding mask: Hugging Face encoders pass one)
is written in arithmetic on float 0/1 values, with no SELECT or other boolean op, so
that compilers without them (LiteRT's MediaTek plugin legalizes none) take attention
whole: the mask is CAST to float, made additive as ``(keep - 1) * MASKED``, and the
probabilities are multiplied by each row's ``max(keep)``. A constant boolean mask adds
-MASKED where it masks, and zeroes the rows it masks whole the same way. That is exact
against torch:
- a masked score becomes ``score - MASKED``, whose exp is 0 in float32 (and in
  float16, the APU's precision) as it is for torch's -inf, unless the row's scores
  span more than MASKED - 104; MASKED is a power of two that float16 holds, so no
  product is ``0 * inf`` (NaN) when a compiler relaxes float32 to float16;
- a row with every key masked is 0, as torch's SDPA makes it (a SELECT to -inf made
  it NaN).

Multi-query attention (Falcon: one key/value head for all query heads) passes key and
value with batch dims of 1 where the query's are the heads; torch broadcasts them. The
query heads are then merged into the rows of one product, (B, H, T, D) viewed as (B, 1,
H*T, D) against keys (B, 1, S, D), and the scores viewed back as (B, H, T, S) for the
mask and softmax: no copy of the keys, and a BATCH_MATMUL with equal batch dims, as
every compiler takes it. Declined, capture decomposed such an attention into torch's
math form, whose guard for rows masked whole (`eq`, `any`, `where`) no MediaTek
compile legalizes: Falcon was split around it on mediatek.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node

from .. import layout
from ..emitter import Emitter, Value
from ..lowering import FLOAT, IsConst, aten, lowering, meta, shape
from .matmul import batch_matmul
from .reduce import reduce_value, softmax_value

# What a masked score loses (see the module docstring): float16's exact power of two.
MASKED = 2.0**14

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def sdpa_args(node: Node) -> dict:
    """The attention's arguments by name."""
    args = dict(zip(_SDPA_ARGS, node.args))
    args.update(node.kwargs)
    return args


def _check_sdpa(node: Node, is_const: IsConst) -> str | None:
    a = sdpa_args(node)
    if a.get("dropout_p", 0.0):
        return "dropout_p > 0"
    if a.get("enable_gqa", False):
        return "enable_gqa (repeat the key/value heads before attention)"
    q, k, v = shape(a["query"]), shape(a["key"]), shape(a["value"])
    if k[:-2] != v[:-2]:
        return f"key batch dims {k[:-2]} differ from value batch dims {v[:-2]}"
    if shared_heads(q[:-2], k[:-2]) is None:
        return (f"query batch dims {q[:-2]} differ from key batch dims {k[:-2]} other than as trailing dims of 1 "
                "(multi-query attention's one key/value head)")
    mask = a.get("attn_mask")
    if mask is not None and meta(mask).dtype not in (torch.float32, torch.bool):
        return f"attention mask dtype {meta(mask).dtype}"
    return None


def shared_heads(query: tuple[int, ...], key: tuple[int, ...]) -> int | None:
    """How many trailing batch dims of the query the keys broadcast over (their size 1
    there, the leading ones equal): 0 when the batch dims are equal, None when the keys
    broadcast otherwise (or not at all)."""
    if len(query) != len(key):
        return None
    shared = len(query)
    while shared and key[shared - 1] == 1 and query[shared - 1] != 1:
        shared -= 1
    return len(query) - shared if query[:shared] == key[:shared] else None


def _sdpa_writes(node: Node, is_const: IsConst) -> frozenset[str]:
    """Two BATCH_MATMULs around a SOFTMAX; a mask is ADDed, a runtime bool mask first
    made additive by a SUB and a MUL, and the rows it masks whole zeroed by a
    REDUCE_MAX and a MUL (CASTs are plumbing)."""
    a = sdpa_args(node)
    ops = {"MUL", "BATCH_MATMUL", "SOFTMAX"}
    mask = a.get("attn_mask")
    if a.get("is_causal", False) or mask is not None:
        ops.add("ADD")
    if isinstance(mask, Node) and meta(mask).dtype == torch.bool and not is_const(mask):
        ops |= {"SUB", "REDUCE_MAX"}
    return frozenset(ops)


@lowering(
    aten.scaled_dot_product_attention.default, writes=_sdpa_writes, dtypes=FLOAT | {torch.bool}, check=_check_sdpa
)
def sdpa(em: Emitter, node: Node) -> Value:
    """softmax(q k^T * scale + mask) v."""
    a = sdpa_args(node)
    q, k, v = em.value(a["query"]), em.value(a["key"]), em.value(a["value"])
    scale = a.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    rank = len(q.shape)
    length, source = q.shape[-2], k.shape[-2]

    heads = q.shape[:-2]  # (B, H): the scores' and output's batch dims
    q = em.elementwise("MUL", [q, scale], q.shape, torch.float32, node.name + "/q_scaled")
    q = _as_rows(em, q, k.shape[:-2])
    swap = layout.identity(rank - 2) + (rank - 1, rank - 2)
    k_t = Value(k.tensor, layout.apply(swap, k.shape), k.dtype, layout.after_permute(k.perm, swap))
    scores = em.reshape(batch_matmul(em, q, k_t, node.name + "/scores"), heads + (length, source))

    mask, rows_open = _additive_mask(em, a, length, source, node.name + "/mask")
    if mask is not None:
        shape = torch.broadcast_shapes(scores.shape, tuple(mask.shape))
        scores = em.elementwise("ADD", [scores, mask], shape, torch.float32, node.name + "/masked")
    probs = softmax_value(em, node.name + "/probs", scores, len(scores.shape) - 1)
    if rows_open is not None:
        probs = em.elementwise("MUL", [probs, rows_open], probs.shape, torch.float32, node.name + "/probs_open")
    if v.shape[:-2] == heads:
        return batch_matmul(em, probs, v, node.name)
    out = batch_matmul(em, _as_rows(em, probs, v.shape[:-2]), v, node.name + "/rows")
    return em.reshape(out, heads + (length, v.shape[-1]), node.name)


def _as_rows(em: Emitter, x: Value, batch: tuple[int, ...]) -> Value:
    """`x` (..., rows, cols) with the batch dims the keys broadcast over merged into its
    rows: (B, H, T, D) -> (B, 1, H*T, D) for keys of batch dims (B, 1)."""
    if x.shape[:-2] == batch:
        return x
    return em.reshape(x, batch + (math.prod(x.shape[:-1]) // math.prod(batch), x.shape[-1]))


Mask = torch.Tensor | Value | None


def _additive_mask(em: Emitter, a: dict, length: int, source: int, name: str) -> tuple[Mask, Mask]:
    """The mask as something to add to the scores (a constant or a Value, written as
    `name`), and, for a boolean mask, 1 for each query row with a key left open and 0 for
    a row masked whole (torch returns zeros there), or None when no row can be."""
    if a.get("is_causal", False):
        keep = torch.ones(length, source, dtype=torch.bool).tril()
        return torch.zeros(length, source).masked_fill(~keep, -math.inf), None
    mask = a.get("attn_mask")
    if mask is None:
        return None, None
    m = em.arg(mask)
    if meta(mask).dtype != torch.bool:
        return m, None
    if isinstance(m, torch.Tensor):
        rows_open = m.any(-1, keepdim=True)
        # -MASKED, not -inf: a row masked whole would be NaN before it is zeroed
        return torch.zeros(m.shape).masked_fill(~m, -MASKED), None if rows_open.all() else rows_open.float()
    keep = em.cast(m, torch.float32)
    closed = em.elementwise("SUB", [keep, 1.0], m.shape, torch.float32, name + "/closed")
    additive = em.elementwise("MUL", [closed, MASKED], m.shape, torch.float32, name)
    rows_open = reduce_value(em, name + "/rows_open", "REDUCE_MAX", keep, [len(m.shape) - 1], keepdim=True)
    return additive, rows_open
