"""An ``aten.index`` whose constant indices read every element in order is written as a
view (and an expand) before partitioning (core/index_views.py): transformers' padding
mask read, which qualcomm declined as a GatherND, is then a view every backend takes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeport.index_views import slice_run_indexes, view_spread_indexes


def _module(forward) -> nn.Module:
    module = nn.Module()
    module.forward = forward
    return module


def _padding_mask_read(mask: torch.Tensor) -> torch.Tensor:
    """transformers' masking_utils: padding_mask[batch_idx, kv_idx] over (b, 1, 1, s)."""
    b, s = mask.shape
    return mask.bool()[torch.arange(b)[:, None, None, None], torch.arange(s)[None, None, None, :]]


def _rewritten(forward, *inputs: torch.Tensor) -> tuple[int, torch.export.ExportedProgram]:
    program = torch.export.export(_module(forward), inputs).run_decompositions()
    return view_spread_indexes(program), program


def _targets(program: torch.export.ExportedProgram) -> set:
    return {n.target for n in program.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("forward, x", [
    (lambda m: _padding_mask_read(m) & True, torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])),
    # spread over (2, 1, 3) and repeated along dim 1: a view, then an expand
    (lambda x: x[torch.arange(2).view(2, 1, 1).expand(2, 4, 1), torch.arange(3).view(1, 1, 3)] * 2,
     torch.randn(2, 3)),
    # the first dim only: the rest are taken whole, after the spread
    (lambda x: x[torch.arange(2)[:, None]] + 1, torch.randn(2, 5, 4)),
], ids=["transformers_padding_mask", "spread_then_expanded", "leading_dims_only"])
def test_an_index_reading_every_element_in_order_becomes_a_view(forward, x):
    count, program = _rewritten(forward, x)
    assert count == 1
    assert torch.ops.aten.index.Tensor not in _targets(program)
    assert torch.ops.aten.arange.start_step not in _targets(program)  # the unread indices went too
    assert torch.equal(program.module()(x), forward(x))


@pytest.mark.parametrize("forward, x", [
    (lambda x: x[torch.tensor([2, 0, 1])] * 2, torch.randn(3, 4)),  # moves rows: a real gather
    (lambda x: x[torch.tensor([0, 1, 1])] * 2, torch.randn(2, 4)),  # repeats a row of a dim it spreads
    (lambda x: x[torch.tensor([True, False, True])] * 2, torch.randn(3, 4)),  # a mask: a run-time count
    (lambda x, i: x[i] * 2, (torch.randn(3, 4), torch.tensor([0, 1, 2]))),  # indices known at run time only
    (lambda x: x[torch.arange(3)[:, None], torch.arange(4)], torch.randn(3, 4)),  # returned: named in the signature
], ids=["permutation", "repeated_row", "bool_mask", "run_time_indices", "returned"])
def test_any_other_index_is_left_alone(forward, x):
    inputs = x if isinstance(x, tuple) else (x,)
    count, program = _rewritten(forward, *inputs)
    assert count == 0
    assert torch.equal(program.module()(*inputs), forward(*inputs))


@pytest.mark.parametrize("forward, x", [
    (lambda x: x[..., [-2]].view(2, 3) * 2, torch.randn(2, 3, 4)),  # Falcon's fused_qkv[..., [-2]], then a view
    (lambda x: x[:, torch.tensor([1, 2, 3])] + 1, torch.randn(2, 5, 4)),  # a run along dim 1
], ids=["falcon_split_heads", "run_along_dim_1"])
def test_an_index_of_one_run_of_positions_becomes_a_slice(forward, x):
    program = torch.export.export(_module(forward), (x,)).run_decompositions()
    assert slice_run_indexes(program) == 1
    assert torch.ops.aten.index.Tensor not in _targets(program)
    assert torch.equal(program.module()(x), forward(x))


@pytest.mark.parametrize("forward", [
    lambda x: x[:, [2, 1]] * 2,  # out of order: a real gather
    lambda x: x[:, [0, 2]] * 2,  # a gap
    lambda x: x[[0, 1], [1, 2]] * 2,  # two index tensors
], ids=["reversed", "gap", "two_tensors"])
def test_an_index_of_anything_but_one_run_is_left_alone(forward):
    x = torch.randn(2, 5, 4)
    program = torch.export.export(_module(forward), (x,)).run_decompositions()
    assert slice_run_indexes(program) == 0
    assert torch.equal(program.module()(x), forward(x))
