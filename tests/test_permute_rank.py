"""Permutes of rank > 4 whose dims move in fewer runs are written at rank <= 4 before
partitioning (core/permute_rank.py): Swin's window partition, which QNN HTP (5 dims)
and NeuroPilot (NNAPI's 4) capped, is then taken whole, and equals eager everywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.permute_rank import collapse_cats, collapse_expands, collapse_permutes, expand_runs, runs
from edgeport.testing import compare, registry_for


class WindowPartition(nn.Module):
    """Swin's window partition and reverse: (B, H, W, C) -> windows -> (B, H, W, C)."""

    def __init__(self, window: int = 2):
        super().__init__()
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.window
        windows = (x * 2).view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, s, s, c)
        windows = windows + 1
        back = windows.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, c)
        return back * 3


def _module(forward) -> nn.Module:
    module = nn.Module()
    module.forward = forward
    return module


def _ranks(program: torch.export.ExportedProgram) -> list[int]:
    return [len(n.meta["val"].shape) for n in program.graph.nodes
            if n.op == "call_function" and isinstance(n.meta.get("val"), torch.Tensor)]


def test_runs_group_dims_that_move_together_and_drop_size_one_dims():
    assert runs((2, 2, 4, 2, 4, 16), [0, 1, 3, 2, 4, 5]) == [[0, 1], [3], [2], [4, 5]]
    assert runs((1, 2, 4, 2, 4, 16), [0, 1, 3, 2, 4, 5]) == [[1], [3], [2], [4, 5]]
    assert runs((2, 3, 4, 5, 6), [4, 3, 2, 1, 0]) == [[4], [3], [2], [1], [0]]  # nothing to merge


@pytest.mark.parametrize("batch", [1, 2])
def test_the_window_partition_is_rewritten_at_rank_4_with_the_same_values(batch):
    module, x = WindowPartition(), torch.randn(batch, 4, 6, 8)
    program = torch.export.export(module, (x,)).run_decompositions()
    assert max(_ranks(program)) == 6
    assert collapse_permutes(program) == 2
    assert max(_ranks(program)) == 4
    assert torch.equal(program.module()(x), module(x))


def test_a_permute_that_cannot_reach_rank_4_or_is_returned_is_left_alone():
    reversed_dims = nn.Module()
    reversed_dims.forward = lambda x: (x * 2).permute(4, 3, 2, 1, 0) + 1
    returned = nn.Module()
    returned.forward = lambda x: (x * 2).view(2, 2, 2, 3, 2, 4).permute(0, 1, 3, 2, 4, 5)
    for module, x in ((reversed_dims, torch.randn(2, 3, 4, 5, 6)), (returned, torch.randn(4, 6, 8))):
        program = torch.export.export(module, (x,)).run_decompositions()
        assert collapse_permutes(program) == 0
        assert torch.equal(program.module()(x), module(x))


def test_a_non_contiguous_input_keeps_its_copy():
    """A view of a transposed value is no plain view: the merge and the clone drop only
    apply to contiguous values, so the portable torch graph still runs."""
    module = nn.Module()
    module.forward = lambda x: (x.transpose(0, 1).reshape(2, 2, 2, 3, 2, 4).permute(0, 1, 3, 2, 4, 5)
                                .contiguous().view(6, 4, 8) + 1)
    x = torch.randn(6, 4, 8)
    program = torch.export.export(module, (x,)).run_decompositions()
    collapse_permutes(program)
    assert torch.equal(program.module()(x), module(x))


@pytest.mark.parametrize("backend", [MediatekBackend(), CpuBackend()], ids=lambda b: b.name)
def test_the_window_partition_is_one_partition_on_a_rank_4_backend(backend):
    module, x = WindowPartition(), torch.randn(2, 4, 6, 8)
    program = edgeport.export(module, (x,), [backend.name], registry=registry_for(backend))
    report = program.report()
    assert [n["op"] for n in report["nodes"] if n["backend"] != backend.name] == []
    assert sum(p["backend"] == backend.name for p in report["partitions"]) == 1
    with torch.no_grad():
        assert compare(program(x), module(x)) < 1e-6


class RepeatKv(nn.Module):
    """Grouped-query attention's key/value heads repeated as transformers' `repeat_kv`
    writes it: (B, kv, T, hs) -> (B, kv, n, T, hs) expand -> (B, kv * n, T, hs)."""

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, heads, t, hs = kv.shape
        repeated = (kv * 2)[:, :, None, :, :].expand(b, heads, q.shape[1] // heads, t, hs).reshape(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, repeated, repeated)


def test_expand_runs_merge_kept_and_broadcast_dims():
    assert expand_runs((1, 2, 1, 8, 16), (1, 2, 3, 8, 16)) == [[0, 1], [2], [3, 4]]
    assert expand_runs((1, 1, 1, 8, 16), (1, 1, 2, 8, 16)) == [[0, 1, 2], [3, 4]]  # leading 1s join the first run
    assert expand_runs((2, 8, 16), (4, 3, 2, 8, 16)) == [[0, 1], [2, 3, 4]]  # a missing dim is a broadcast one
    assert expand_runs((2, 1, 3, 1, 5), (2, 4, 3, 6, 5)) == [[0], [1], [2], [3], [4]]  # nothing to merge


def test_repeated_key_value_heads_are_expanded_at_rank_4_with_the_same_values():
    module, q, kv = RepeatKv(), torch.randn(2, 6, 8, 16), torch.randn(2, 2, 8, 16)
    program = torch.export.export(module, (q, kv)).run_decompositions()
    before = program.module()(q, kv)  # the decomposed attention, not eager's fused kernel: bit for bit
    assert max(_ranks(program)) == 5
    assert collapse_expands(program) == 1
    assert max(_ranks(program)) == 4
    assert torch.equal(program.module()(q, kv), before)


def test_heads_of_a_transposed_value_are_copied_at_rank_4_then_expanded():
    """Phi-3's values are sliced out of its fused projection and transposed: no view of
    them is torch's order, so the rewrite copies them first, at rank 4."""
    module = nn.Module()
    module.forward = lambda q, kv: RepeatKv()(q, (kv * 2).transpose(1, 2))
    q, kv = torch.randn(2, 6, 8, 16), torch.randn(2, 8, 2, 16)
    program = torch.export.export(module, (q, kv)).run_decompositions()
    before = program.module()(q, kv)
    assert collapse_expands(program) == 1
    assert max(_ranks(program)) == 4
    assert torch.equal(program.module()(q, kv), before)


@pytest.mark.parametrize("forward, x", [
    (lambda x: (x * 2).expand(2, 4, 3, 6, 5).reshape(8, 3, 30) + 1, torch.randn(2, 1, 3, 1, 5)),  # five runs
    (lambda x: (x * 2).expand(2, 3, 4, 8, 16) + 1, torch.randn(2, 3, 1, 8, 16)),  # the add reads rank 5 anyway
], ids=["five_runs", "read_by_an_add"])
def test_an_expand_the_rewrite_would_not_bring_to_rank_4_is_left_alone(forward, x):
    program = torch.export.export(_module(forward), (x,)).run_decompositions()
    assert collapse_expands(program) == 0
    assert torch.equal(program.module()(x), forward(x))


def test_repeated_key_value_heads_are_one_mediatek_partition():
    module, q, kv = RepeatKv(), torch.randn(1, 6, 8, 16), torch.randn(1, 1, 8, 16)  # one key/value head
    backend = MediatekBackend()
    program = edgeport.export(module, (q, kv), [backend.name], registry=registry_for(backend))
    report = program.report()
    assert [n["op"] for n in report["nodes"] if n["backend"] != backend.name] == []
    with torch.no_grad():
        assert compare(program(q, kv), module(q, kv)) < 1e-6


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """GPT-J's interleaved rotary half (transformers' `rotate_every_two`): a rank-5 stack
    of a strided slice and a negated one, flattened back to rank 4."""
    return torch.stack((-x[:, :, :, 1::2], x[:, :, :, ::2]), dim=-1).flatten(-2)


class InterleavedRotary(nn.Module):
    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x * 2
        return x * cos + rotate_every_two(x) * sin


def _rotary_inputs() -> tuple[torch.Tensor, ...]:
    return torch.randn(1, 6, 4, 8), torch.randn(1, 6, 1, 8), torch.randn(1, 6, 1, 8)


def test_an_interleaved_rotary_stack_is_concatenated_at_rank_3_with_the_same_values():
    module, inputs = InterleavedRotary(), _rotary_inputs()
    program = torch.export.export(module, inputs).run_decompositions()
    assert max(_ranks(program)) == 5
    assert collapse_cats(program) == 1
    assert max(_ranks(program)) == 4
    assert torch.equal(program.module()(*inputs), module(*inputs))


@pytest.mark.parametrize("forward, x", [
    (lambda x: torch.stack((x, x * 2), dim=-1) + 1, torch.randn(1, 2, 3, 4)),  # the add reads rank 5 anyway
    (lambda x: torch.stack((x, x * 2), dim=1).flatten(1, 2), torch.randn(2, 3, 4)),  # rank 4: nothing to do
], ids=["read_by_an_add", "rank_4"])
def test_a_cat_the_rewrite_would_not_bring_below_rank_5_is_left_alone(forward, x):
    program = torch.export.export(_module(forward), (x,)).run_decompositions()
    assert collapse_cats(program) == 0
    assert torch.equal(program.module()(x), forward(x))


def test_an_interleaved_rotary_is_one_mediatek_partition_equal_to_eager():
    """GPT-J's rotary was a portable step (rank-5 unsqueezes, cat and view) in every layer."""
    module, inputs = InterleavedRotary(), _rotary_inputs()
    backend = MediatekBackend()
    program = edgeport.export(module, inputs, [backend.name], registry=registry_for(backend))
    assert [n["op"] for n in program.report()["nodes"] if n["backend"] != backend.name] == []
    with torch.no_grad():
        assert compare(program(*inputs), module(*inputs)) < 1e-6
