"""Attention masks on mediatek: written without the boolean ops LiteRT's MediaTek plugin
does not legalize (SELECT, LOGICAL_AND, LOGICAL_OR, GATHER_ND), exactly, or declined with its reason.

A padding mask reaches attention as Hugging Face encoders build it: the int64 mask cast
to bool, read at constant positions (an index that only reshapes), ANDed with an
all-true constant, and passed to scaled_dot_product_attention, which the writer keeps
whole and masks with float arithmetic (backends/tflite/ops/attention.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import edgeport
from edgeport.backends.mediatek import MediatekBackend
from edgeport.testing import compare, registry_for


class PaddedAttention(nn.Module):
    """Transformers' bidirectional padding mask, as torch.export captures it."""

    def __init__(self, length: int):
        super().__init__()
        self.register_buffer("batch", torch.arange(1).view(1, 1, 1, 1))
        self.register_buffer("keys", torch.arange(length).view(1, 1, 1, length))
        self.register_buffer("open", torch.ones(1, 1, length, 1, dtype=torch.bool))

    def forward(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = self.open & mask.bool()[self.batch, self.keys]
        return F.scaled_dot_product_attention(q, q, q, attn_mask=keep.expand(1, -1, -1, -1))


def export(module: nn.Module, *inputs: torch.Tensor) -> edgeport.Program:
    return edgeport.export(module, inputs, ["mediatek"], registry=registry_for(MediatekBackend()))


def left(program: edgeport.Program) -> dict[str, str]:
    return {n["op"]: n["reasons"]["mediatek"] for n in program.report()["nodes"] if n["backend"] != "mediatek"}


def partitions(program: edgeport.Program) -> int:
    return sum(p["backend"] == "mediatek" for p in program.report()["partitions"])


def test_a_padding_mask_is_one_partition_after_its_int64_cast_and_equals_eager():
    module, q = PaddedAttention(6), torch.randn(1, 2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    program = export(module, q, mask)
    assert partitions(program) == 1
    assert list(left(program)) == ["aten._to_copy.default"]
    assert "dtype int64 at run time has no Neuron tensor type" in left(program)["aten._to_copy.default"]
    with torch.no_grad():
        assert compare(program(q, mask), module(q, mask)) < 1e-5
        everything_masked = torch.zeros_like(mask)  # torch gives zeros, not NaN
        assert compare(program(q, everything_masked), module(q, everything_masked)) < 1e-5


def test_attention_with_a_run_time_bool_mask_is_taken_whole():
    module = nn.Module()
    module.forward = lambda q, keep: F.scaled_dot_product_attention(q, q, q, attn_mask=keep)
    q, keep = torch.randn(1, 2, 5, 8), torch.rand(5, 5) > 0.4
    keep[3] = False
    program = export(module, q, keep)
    assert left(program) == {} and partitions(program) == 1
    with torch.no_grad():
        assert compare(program(q, keep), module(q, keep)) < 1e-5


def test_a_gather_that_moves_values_stays_declined_with_the_plugins_reason():
    """Only an index that spreads x's dims over the output is a reshape; a permutation is a real GATHER_ND."""
    module = nn.Module()
    module.register_buffer("order", torch.tensor([2, 0, 1]))
    module.forward = lambda x: x[module.order] * 2
    program = export(module, torch.randn(3, 4))
    assert "(written as GATHER_ND) is not legalized" in left(program)["aten.index.Tensor"]


def written_ops(program: edgeport.Program) -> set[str]:
    from edgeport.backends.mediatek import written

    return {op.op for name in program.manifest.artifacts for op in written.read_ops(bytes(program.files[name]))}


def test_an_and_or_of_booleans_is_float_arithmetic_and_equals_eager():
    """GPT-2's mask: a causal constant that is not all true, ANDed with a run-time mask.
    LiteRT's MediaTek plugin legalizes no LOGICAL_* op: the AND is a MUL of 0/1 floats,
    the OR a MAXIMUM, between CASTs (all legalized), so the plugin takes them."""
    module = nn.Module()
    module.register_buffer("some", torch.tensor([True, False, True, True]))
    module.forward = lambda x, y: ((module.some & (x > 0)) | (y > 0)).float() * x
    x, y = torch.randn(2, 4), torch.randn(2, 4)
    program = export(module, x, y)
    assert left(program) == {} and partitions(program) == 1
    ops = written_ops(program)
    assert {"MUL", "MAXIMUM"} <= ops and not {"LOGICAL_AND", "LOGICAL_OR"} & ops, ops
    with torch.no_grad():
        assert compare(program(x, y), module(x, y)) == 0


class MultiQueryAttention(nn.Module):
    """Falcon's attention: one key/value head broadcast over the query heads, and a
    causal bool mask computed from positions (a constant at export)."""

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(q.shape[-2])
        causal = (positions[None, :] <= positions[:, None]).view(1, 1, q.shape[-2], q.shape[-2])
        return F.scaled_dot_product_attention(q, kv, kv * 2, attn_mask=causal)


def test_multi_query_attention_is_taken_whole_with_no_masking_guard_and_equals_eager():
    """Its keys' batch dims (1, 1) against the query's (1, 4) were declined, so capture
    decomposed it into torch's math form: its guard for rows masked whole (`eq`, `any`,
    `where`: EQUAL, REDUCE_ANY, SELECT_V2, none legalized) was a portable step between
    two mediatek partitions. The heads are merged into the product's rows instead."""
    module, q, kv = MultiQueryAttention(), torch.randn(1, 4, 6, 8), torch.randn(1, 1, 6, 8)
    program = export(module, q, kv)
    assert left(program) == {} and partitions(program) == 1
    assert [n["op"] for n in program.report()["nodes"] if n["op"].startswith("aten.scaled")] == [
        "aten.scaled_dot_product_attention.default"]
    assert "BROADCAST_TO" not in written_ops(program)
    with torch.no_grad():
        assert compare(program(q, kv), module(q, kv)) < 1e-5


def test_multi_query_attention_with_a_row_masked_whole_gives_torchs_zeros():
    module = nn.Module()
    module.forward = lambda q, kv, keep: F.scaled_dot_product_attention(q, kv, kv, attn_mask=keep)
    q, kv, keep = torch.randn(2, 3, 5, 8), torch.randn(2, 1, 5, 8), torch.rand(2, 1, 5, 5) > 0.4
    keep[1, 0, 2] = False
    program = export(module, q, kv, keep)
    assert left(program) == {} and partitions(program) == 1
    with torch.no_grad():
        assert compare(program(q, kv, keep), module(q, kv, keep)) < 1e-5
