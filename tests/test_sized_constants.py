"""Values computed from weights, literals and dynamic sizes (core/sized_constants.py):
stored at their largest size and narrowed at run time, or left alone when that would be
wrong; and BERT with a dynamic sequence length delegated whole on cpu, its encoder whole
on mediatek, several lengths through one loaded program equal to eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.capture import capture
from edgeport.sized_constants import NARROW_TO, fold_sized_constants
from edgeport.testing import registry_for
from test_fold import BertIds, BertWithMask, _bert

SEQ = torch.export.Dim("seq", min=2, max=32)
LENGTHS = (2, 9, 32, 9)


def _sized(module: nn.Module, *inputs: torch.Tensor):
    program = capture(module, inputs, [], {}, tuple({1: SEQ} for _ in inputs))
    return fold_sized_constants(program)


def _targets(program) -> set:
    return {n.target for n in program.graph.nodes if n.op == "call_function"}


class PositionTable(nn.Module):
    """x + table[:, :T]: a slice of a buffer to the input's length."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.randn(1, 64, 4))

    def forward(self, x):
        return x + self.table[:, : x.shape[1]]


def test_a_slice_of_a_buffer_to_the_input_length_is_narrowed_at_run_time():
    model = PositionTable()
    result = _sized(model, torch.randn(2, 8, 4))
    program = result.program
    assert result.changed and NARROW_TO in _targets(program)
    assert torch.ops.aten.slice.Tensor not in _targets(program)
    (stored,) = [v for k, v in program.constants.items() if k in result.folded]
    assert stored.shape == (1, 32, 4), "stored at the Dim's max, not the buffer's 64"
    for length in LENGTHS:
        x = torch.randn(2, length, 4)
        assert torch.equal(program.module()(x), model(x))


class LargePositions(nn.Module):
    """Position embeddings of 32 x 8200 floats (over the 1 MiB allowance) at positions [:T]."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(64, 8200)
        self.register_buffer("positions", torch.arange(64)[None])

    def forward(self, x):
        return x + self.table(self.positions[:, : x.shape[1]])


def test_a_float_symbol_is_no_dynamic_dim():
    """``x.item()`` makes a float symbol whose range is (-oo, oo): not a dim to size
    constants by (the OpInfo sweep's item ended in a raw TypeError); export then refuses
    the float output cleanly."""

    class Item(nn.Module):
        def forward(self, x):
            return x.item()

    with pytest.raises(edgeport.EdgeportError, match="is a Python float computed from a tensor"):
        edgeport.export(Item(), (torch.tensor(2.5),), ["cpu"])


def test_a_value_too_large_to_store_leaves_its_inputs_stored_instead():
    model = LargePositions().eval()
    result = _sized(model, torch.randn(1, 8, 8200))
    targets = _targets(result.program)
    assert NARROW_TO in targets and torch.ops.aten.embedding.default in targets
    (stored,) = [v for k, v in result.program.constants.items() if k in result.folded]
    assert stored.shape == (1, 32) and stored.dtype == torch.int64, "the positions, not their embeddings"
    x = torch.randn(1, 5, 8200)
    with torch.no_grad():
        assert torch.equal(result.program.module()(x), model(x))


class Normalized(nn.Module):
    def forward(self, x):
        t = x.shape[1]
        return x * (torch.arange(t) / t)  # not the leading part of its value at the largest size


def test_a_value_that_is_not_a_prefix_of_its_largest_stays_computed():
    """arange(T) / T is refused; arange(T), a prefix, is stored and narrowed instead."""
    model = Normalized()
    result = _sized(model, torch.randn(2, 8))
    assert list(result.folded.values()) == ["arange"]
    assert torch.ops.aten.div.Tensor in _targets(result.program)
    for length in LENGTHS:
        x = torch.randn(2, length)
        assert torch.equal(result.program.module()(x), model(x))


class AllTrueMask(nn.Module):
    def forward(self, q):
        t = q.shape[2]
        keep = (torch.arange(t)[None, None, :, None] >= 0).expand(q.shape[0], 1, t, t)
        return nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=keep)


def test_an_all_true_attention_mask_is_dropped():
    model = AllTrueMask()
    program = capture(model, (torch.randn(2, 2, 8, 4),), [CpuBackend()], {}, ({2: SEQ},))  # keeps sdpa whole
    result = fold_sized_constants(program)
    (sdpa,) = [n for n in result.program.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default]
    assert len(sdpa.args) <= 3 or sdpa.args[3] is None
    assert not result.program.constants, "the mask is not stored either"
    q = torch.randn(2, 2, 5, 4)
    torch.testing.assert_close(result.program.module()(q), model(q))


# -- BERT with a dynamic sequence length ----------------------------------------------------


@pytest.fixture(scope="module")
def bert():
    return _bert()


def _steps(program) -> list[tuple[str, str | None]]:
    return [(s.kind, s.backend) for s in program.manifest.methods["forward"].steps]


def _loaded(model, backend, inputs, tmp_path):
    program = edgeport.export(model, inputs, [backend.name], dynamic_shapes=tuple({1: SEQ} for _ in inputs),
                              registry=registry_for(backend))
    program.save(tmp_path / "bert.edgeport")
    return program, edgeport.load(tmp_path / "bert.edgeport", registry=registry_for(backend))


def _equal_eager_at_each_length(model, loaded, masked: bool):
    for length in LENGTHS:
        ids = torch.randint(0, 100, (2, length))
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, length // 2:] = 0
        inputs = (ids, mask) if masked else (ids,)
        with torch.no_grad():
            torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bert_with_a_dynamic_sequence_is_one_cpu_delegate(bert, tmp_path):
    model = BertIds(bert)
    program, loaded = _loaded(model, CpuBackend(), (torch.randint(0, 100, (2, 8)),), tmp_path)
    assert _steps(program) == [("delegate", "cpu")]
    _equal_eager_at_each_length(model, loaded, masked=False)


@pytest.mark.slow
def test_bert_with_a_dynamic_sequence_on_mediatek_keeps_only_the_lookups_portable(bert, tmp_path):
    model = BertIds(bert)
    program, loaded = _loaded(model, MediatekBackend(), (torch.randint(0, 100, (2, 8)),), tmp_path)
    assert _steps(program) == [("portable", None), ("delegate", "mediatek")]
    portable = [n for n in program.report()["nodes"] if n["backend"] == "portable"]
    assert {n["op"] for n in portable} == {"aten.embedding.default", "edgeport.narrow_to.default"}
    assert all("NEURON_UNKNOWN placeholder" in n["reasons"]["mediatek"] for n in portable)
    _equal_eager_at_each_length(model, loaded, masked=False)


@pytest.mark.slow
def test_bert_with_a_dynamic_sequence_and_an_attention_mask_is_one_cpu_delegate(bert, tmp_path):
    """The padding mask is read at positions narrowed to the length (a GATHER_ND)."""
    model = BertWithMask(bert)
    inputs = (torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.long))
    program, loaded = _loaded(model, CpuBackend(), inputs, tmp_path)
    assert _steps(program) == [("delegate", "cpu")]
    _equal_eager_at_each_length(model, loaded, masked=True)
