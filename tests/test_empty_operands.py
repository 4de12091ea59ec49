"""Zero-size operands of a cat are dropped before partitioning (core/empty_operands.py):
Phi-3 rotates whole heads, so the pass-through half of its partial rotary embedding is a
zero-size slice every backend declined, and each layer's cat went portable with it."""

from __future__ import annotations

import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.empty_operands import drop_empty_cat_operands
from edgeport.testing import compare, registry_for


class PartialRotary(nn.Module):
    """Phi-3's rotary split: the first `rotated` dims of each head turned, the rest passed."""

    def __init__(self, rotated: int):
        super().__init__()
        self.rotated = rotated

    def forward(self, q: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        turned, passed = q[..., :self.rotated], q[..., self.rotated:]
        return torch.cat([turned * cos, passed], dim=-1) + 1


def _empty_nodes(program: torch.export.ExportedProgram) -> list[str]:
    return [n.name for n in program.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].numel() == 0]


def test_an_empty_operand_is_dropped_and_a_cat_of_one_is_its_operand():
    module, q, cos = PartialRotary(8), torch.randn(1, 2, 5, 8), torch.randn(5, 8)
    program = torch.export.export(module, (q, cos)).run_decompositions()
    assert _empty_nodes(program)
    assert drop_empty_cat_operands(program) == 1
    assert _empty_nodes(program) == []
    assert not [n for n in program.graph.nodes if n.target == torch.ops.aten.cat.default]
    assert torch.equal(program.module()(q, cos), module(q, cos))


def test_a_cat_with_nothing_empty_or_only_empty_operands_is_left_alone():
    for rotated, cat_of in ((4, torch.randn(1, 2, 5, 8)), (0, torch.randn(1, 2, 5, 0))):
        module, cos = PartialRotary(rotated), torch.randn(5, rotated)
        program = torch.export.export(module, (cat_of, cos)).run_decompositions()
        assert drop_empty_cat_operands(program) == 0
        assert torch.equal(program.module()(cat_of, cos), module(cat_of, cos))


def test_a_returned_cat_keeps_its_node_with_its_one_operand():
    module = nn.Module()
    module.forward = lambda x: torch.cat([x * 2, x[:, 3:]], dim=1)
    x = torch.randn(2, 3)
    program = torch.export.export(module, (x,)).run_decompositions()
    assert drop_empty_cat_operands(program) == 1
    assert _empty_nodes(program) == []
    assert torch.equal(program.module()(x), module(x))


def test_a_fully_rotated_head_is_one_cpu_partition():
    module, q, cos = PartialRotary(8), torch.randn(1, 2, 5, 8), torch.randn(5, 8)
    backend = CpuBackend()
    program = edgeport.export(module, (q, cos), [backend.name], registry=registry_for(backend))
    report = program.report()
    assert [n["op"] for n in report["nodes"] if n["backend"] != backend.name] == []
    with torch.no_grad():
        assert compare(program(q, cos), module(q, cos)) < 1e-6


class PromotedByAnEmpty(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x, torch.zeros(2, 0, dtype=torch.float64)], dim=-1) * 2


def test_an_empty_operand_of_a_wider_dtype_is_kept_it_promotes_the_cat():
    module, x = PromotedByAnEmpty(), torch.randn(2, 3)
    program = torch.export.export(module, (x,)).run_decompositions()
    assert drop_empty_cat_operands(program) == 0
    assert program.module()(x).dtype == torch.float64


class TransposedRotary(nn.Module):
    """A transposed value rotated whole, concatenated with nothing, then viewed: the cat's
    value is contiguous where its one operand is not (Phi-3's keys with fewer key/value
    heads, whose repeat the rank-4 rewrite views)."""

    def forward(self, k: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        turned = k.transpose(1, 2) * cos
        return torch.cat([turned, turned[..., 8:]], dim=-1).view(1, 2, 5 * 8) + 1


def test_a_cat_of_one_transposed_operand_stays_a_copy_that_later_views_can_read():
    """Replaced by its operand, the view after it could not run (int8 calibration of a
    Phi-3 with grouped key/value heads failed: "view size is not compatible with input
    tensor's size and stride")."""
    module, k, cos = TransposedRotary(), torch.randn(1, 5, 2, 8), torch.randn(5, 8)
    program = torch.export.export(module, (k, cos)).run_decompositions()
    assert drop_empty_cat_operands(program) == 1
    (cat,) = [n for n in program.graph.nodes if n.target == torch.ops.aten.cat.default]
    assert len(cat.args[0]) == 1  # a copy, contiguous as torch's cat returns
    assert torch.equal(program.module()(k, cos), module(k, cos))
