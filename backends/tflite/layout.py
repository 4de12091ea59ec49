"""Permutation arithmetic for carrying tensors in a layout other than torch's.

A value inside the artifact is a torch tensor stored permuted: `physical =
logical.permute(perm)`. NCHW activations travel as NHWC (perm (0, 2, 3, 1)), and a
torch `permute` only changes the perm, so no TRANSPOSE is emitted until some op
really needs another order.
"""

from __future__ import annotations

from typing import Sequence

Perm = tuple[int, ...]

NHWC: Perm = (0, 2, 3, 1)  # physical (N, H, W, C) of a logical (N, C, H, W)
NWC: Perm = (0, 2, 1)  # physical (N, W, C) of a logical (N, C, W), for conv1d


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def inverse(perm: Sequence[int]) -> Perm:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def apply(perm: Sequence[int], items: Sequence) -> tuple:
    """items reordered the way `permute(perm)` reorders dims."""
    return tuple(items[p] for p in perm)


def transpose_between(src: Sequence[int], dst: Sequence[int]) -> Perm:
    """The TRANSPOSE permutation that takes physical layout `src` to layout `dst`."""
    inv = inverse(src)
    return tuple(inv[d] for d in dst)


def after_permute(perm: Sequence[int], dims: Sequence[int]) -> Perm:
    """The perm of `x.permute(dims)` when its physical tensor is that of `x` (no data moved)."""
    inv = inverse(dims)
    return tuple(inv[p] for p in perm)


def only_unit_dims_move(shape: Sequence[int], src: Sequence[int], dst: Sequence[int]) -> bool:
    """True when going from layout src to dst moves only size-1 dims: a reshape, not a transpose."""
    return [d for d in src if shape[d] != 1] == [d for d in dst if shape[d] != 1]


def drop_dims(perm: Sequence[int], dropped: Sequence[int]) -> Perm:
    """The perm after removing logical dims `dropped` (and their physical axes)."""
    gone = set(dropped)
    kept = [p for p in perm if p not in gone]
    rank = {d: i for i, d in enumerate(sorted(kept))}
    return tuple(rank[p] for p in kept)


def with_unit_dims(order: Sequence[int], shape: Sequence[int]) -> Perm:
    """A full perm from the stored order of the non-unit dims of `shape`: each size-1 dim
    is stored right after the dim before it (so an in-order `order` gives identity, and
    a dim later expanded from size 1 sits next to its logical neighbour)."""
    perm = list(order)
    for u in (d for d in range(len(shape)) if shape[d] == 1):
        perm.insert(perm.index(u - 1) + 1 if u else 0, u)
    return tuple(perm)


def normalize_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim
