"""Constant folding at export (core/fold.py): what folds, what must not, the size rule,
and BERT-style encoders that become one partition on cpu and mediatek because of it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.mediatek import MediatekBackend
from edgeport.capture import capture
from edgeport.fold import FOLDED_PREFIX, SIZE_ALLOWANCE, fold_constants, module_value
from edgeport.testing import registry_for


def _fold(module: nn.Module, *inputs: torch.Tensor, dynamic_shapes=None):
    program = capture(module, inputs, [], {}, dynamic_shapes)
    return program, fold_constants(program)


def _ops(program) -> list[str]:
    return [n.target.__name__.split(".")[0] for n in program.graph.nodes if n.op == "call_function"]


class CausalMask(nn.Module):
    """Mask arithmetic on literals: arange, full, ge, bitwise_and, then a runtime where."""

    def forward(self, scores):
        t = scores.shape[-1]
        i = torch.arange(t)
        allowed = (i[:, None] >= i[None, :]) & torch.full((t, t), True)
        return scores.masked_fill(~allowed, -1e9)


def test_literal_mask_arithmetic_folds_to_one_constant_and_computes_the_same():
    scores = torch.randn(2, 6, 6)
    before, result = _fold(CausalMask(), scores)
    assert result.changed
    assert not {"arange", "ge", "bitwise_and", "full"} & set(_ops(result.program))
    assert all(name.startswith(FOLDED_PREFIX) for name in result.folded)
    assert torch.equal(result.program.module()(scores), CausalMask()(scores))
    assert "arange" in _ops(before), "folding leaves the program it was given alone"


class TransposedWeight(nn.Module):
    def __init__(self, tied: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(64, 512 * 32))  # 4 MiB: beyond the allowance
        self.tied = tied

    def forward(self, x):
        y = x @ self.weight.t()  # (2, 64)
        return (y, x[:, :64] @ self.weight) if self.tied else y  # a runtime op reads the weight itself


def test_a_transposed_weight_replaces_its_weight():
    model = TransposedWeight(tied=False)
    x = torch.randn(2, 512 * 32)
    _, result = _fold(model, x)
    program = result.program
    assert list(program.state_dict) == [], "the weight is read only by its transpose: it is replaced, not kept"
    (stored,) = program.constants.values()
    assert stored.shape == (512 * 32, 64)
    assert torch.allclose(program.module()(x), model(x), rtol=1e-4, atol=1e-3)


def test_a_large_value_whose_sources_stay_read_is_not_folded():
    """Folding weight.t() while weight.sum() still reads the weight would store it twice."""
    model = TransposedWeight(tied=True)
    x = torch.randn(2, 512 * 32)
    _, result = _fold(model, x)
    assert not any(name.startswith(FOLDED_PREFIX + "permute") for name in result.folded)
    assert "weight" in result.program.state_dict
    for got, want in zip(result.program.module()(x), model(x)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)


class ExpandScalar(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.n = n

    def forward(self, x):
        return x * self.scale.expand(self.n, self.n).exp()


def test_a_huge_constant_from_a_small_one_is_not_folded():
    n = 1024  # 4 MiB of float32 from one scalar: more than the allowance
    assert n * n * 4 > SIZE_ALLOWANCE
    x = torch.randn(n, n)
    _, result = _fold(ExpandScalar(n), x)
    assert "exp" in _ops(result.program), "the big value is computed at run time"
    assert not result.changed
    assert torch.allclose(result.program.module()(x), ExpandScalar(n)(x))


def test_a_small_expand_folds():
    x = torch.randn(8, 8)
    _, result = _fold(ExpandScalar(8), x)
    assert "exp" not in _ops(result.program)
    assert torch.allclose(result.program.module()(x), ExpandScalar(8)(x))


class Stateful(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(4))
        self.register_buffer("offset", torch.ones(4))

    def forward(self, x):
        self.count.add_(1)
        return x + self.count * 2 + self.offset * 3 + torch.rand(4)


def test_mutated_state_and_random_ops_never_fold():
    _, result = _fold(Stateful(), torch.randn(4))
    ops = _ops(result.program)
    assert "rand" in ops
    assert [result.folded[name] for name in result.folded] == ["mul_1"], result.folded  # offset * 3 only
    assert "count" in result.program.state_dict


class PositionTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(64, 4))

    def forward(self, x):
        return x + self.table[torch.arange(x.shape[1])]


def test_a_value_of_a_dynamic_size_does_not_fold():
    seq = torch.export.Dim("seq", min=2, max=64)
    _, result = _fold(PositionTable(), torch.randn(2, 8, 4), dynamic_shapes=({1: seq},))
    assert not result.changed


def test_returned_constants_stay_outputs():
    class ReturnsTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3))

        def forward(self, x):
            return x + 1, self.w * 2

    _, result = _fold(ReturnsTable(), torch.randn(3))
    assert not result.changed


def test_module_value_computes_what_a_captured_module_reads_only_from_its_attributes():
    """The qualcomm quantizer reads an attention's float mask this way, on the module
    PT2E annotates (parameters are get_attr nodes there, not inputs)."""

    class Biased(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(5, 2))
            self.register_buffer("index", torch.tensor([[0, 1], [4, 3]]))

        def forward(self, x):
            return x + self.table[self.index].permute(2, 0, 1) * 2

    model = Biased()
    module = capture(model, (torch.randn(2, 2, 2),), [], {}).module()
    nodes = {n.target: n for n in module.graph.nodes if n.op == "call_function"}
    scaled = next(n for n in module.graph.nodes if n.target == torch.ops.aten.mul.Tensor)
    assert torch.equal(module_value(scaled), model.table[model.index].permute(2, 0, 1).detach() * 2)
    assert module_value(nodes[torch.ops.aten.add.Tensor]) is None  # reads the input


# -- BERT-style encoders -----------------------------------------------------------------


def _bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


class BertWithMask(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids, mask):
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


class BertIds(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids):
        return self.bert(input_ids=ids).last_hidden_state


def _steps(program) -> list[tuple[str, str | None]]:
    return [(s.kind, s.backend) for s in program.manifest.methods["forward"].steps]


@pytest.fixture(scope="module")
def bert():
    return _bert()


@pytest.mark.slow
def test_bert_with_an_attention_mask_is_one_cpu_partition(bert):
    model = BertWithMask(bert)
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0  # padding in the second sequence
    program = edgeport.export(model, (ids, mask), ["cpu"], registry=registry_for(CpuBackend()))
    assert _steps(program) == [("delegate", "cpu")]
    with torch.no_grad():
        assert torch.allclose(program(ids, mask), model(ids, mask), atol=1e-5)
    assert program.report()["folded"], "the report lists what was folded"


@pytest.mark.slow
def test_bert_encoder_is_one_mediatek_partition(bert):
    """Everything after the token lookup (a GATHER, which NeuroPilot does not legalize):
    before folding, the position tables and the all-true mask split it in three."""
    model = BertIds(bert)
    ids = torch.randint(0, 100, (2, 8))
    program = edgeport.export(model, (ids,), ["mediatek"], registry=registry_for(MediatekBackend()))
    assert _steps(program) == [("portable", None), ("delegate", "mediatek")]
    portable = [n for n in program.report()["nodes"] if n["backend"] == "portable"]
    assert [n["op"] for n in portable] == ["aten.embedding.default"]
    reason = portable[0]["reasons"]["mediatek"]
    assert "(written as GATHER) is not legalized" in reason and "kSupportedOps" in reason
    assert "NEURON_GATHER" in reason and "NEURON_UNKNOWN placeholder" in reason, "the vendor source is cited"
    with torch.no_grad():
        assert torch.allclose(program(ids), model(ids), atol=1e-5)


@pytest.mark.slow
def test_bert_with_a_mask_is_one_mediatek_partition_after_the_lookup_and_the_masks_int64_cast(bert):
    """The mask's arithmetic once added EQUAL, SELECT_V2, LOGICAL_* and REDUCE_ANY per
    layer, which LiteRT's plugin legalizes none of: now attention takes the mask whole
    in float arithmetic, and only the GATHER and the int64 input's cast stay portable."""
    model = BertWithMask(bert)
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    program = edgeport.export(model, (ids, mask), ["mediatek"], registry=registry_for(MediatekBackend()))
    assert _steps(program) == [("portable", None), ("delegate", "mediatek")]
    portable = {n["op"]: n["reasons"]["mediatek"] for n in program.report()["nodes"] if n["backend"] == "portable"}
    assert set(portable) == {"aten.embedding.default", "aten._to_copy.default"}
    assert "NEURON_UNKNOWN placeholder" in portable["aten.embedding.default"]
    assert "dtype int64 at run time" in portable["aten._to_copy.default"]
    with torch.no_grad():
        assert torch.allclose(program(ids, mask), model(ids, mask), atol=1e-5)
