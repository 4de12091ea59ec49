"""Placement is verified at compile time: what QNN refuses goes back to the partitioner.

These call `compile` on graphs the support table would not hand over, to exercise the
ground truth itself: QNN's verdict, mapped back to aten node names.
"""

import pytest
import torch

import edgeport
from edgeport.backends.qualcomm import QualcommOptions
from edgeport.testing import registry_for

from qualcomm_helpers import MIN_COSINE, Fn, cosine, partition_of


def declined(backend, fn, inputs, **options):
    with pytest.raises(edgeport.DeclineNodes) as info:
        backend.compile(partition_of(Fn(fn), *inputs), QualcommOptions(**options))
    return info.value.reasons


def test_a_node_qnn_refuses_comes_back_declined_with_qnns_reason(backend):
    reasons = declined(backend, lambda x: torch.erf(x * 2) + 1, (torch.randn(2, 8),))
    assert list(reasons) == ["erf"]  # mul and add were fine
    assert reasons["erf"].startswith("QNN: Operators of type `Erf` are not supported by QNN EP")


def test_a_generic_refusal_carries_qnns_own_error_line(backend):
    reasons = declined(backend, lambda x: x.view(1, 2, 1, 2, 1, 4) + 1, (torch.randn(2, 8),))
    assert "incorrect Rank 6" in reasons["view"]


def test_a_graph_qnn_fails_as_a_whole_is_narrowed_to_the_failing_op(backend):
    # HTP v68 (SM8350) claims a 1000-wide cumsum, then fails to finalize it.
    fn = lambda x: torch.cumsum((x * 2).relu(), -1).sigmoid() + x  # noqa: E731
    reasons = declined(backend, fn, (torch.randn(1, 1000),), soc="SM8350")
    assert list(reasons) == ["cumsum"]
    assert "QNN_COMMON_ERROR_MEM_ALLOC" in reasons["cumsum"]


class CumsumBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(1000, 1000)

    def forward(self, x):
        return torch.cumsum(self.inner(x).relu(), -1).sigmoid() + x


def test_after_a_decline_the_core_keeps_the_rest_on_qnn_and_the_program_matches_eager(backend):
    torch.manual_seed(0)
    model, inputs = CumsumBlock().eval(), (torch.randn(1, 1000),)
    program = edgeport.api.export(
        model, inputs, ["qualcomm"], options={"qualcomm": {"soc": "SM8350"}}, registry=registry_for(backend)
    )
    placement = {n["name"]: n for n in program.report()["nodes"]}
    assert placement["cumsum"]["backend"] != "qualcomm"
    assert "QNN_COMMON_ERROR_MEM_ALLOC" in placement["cumsum"]["reasons"]["qualcomm"]
    assert {n["backend"] for name, n in placement.items() if name != "cumsum"} == {"qualcomm"}
    with torch.no_grad():
        assert cosine(program(*inputs).numpy(), model(*inputs).numpy()) >= MIN_COSINE


def test_bisection_finds_each_op_that_fails_alone():
    from edgeport.backends.qualcomm.placement import _bisect

    groups = [(name, [i]) for i, name in enumerate("abcdefgh")]
    calls = []

    def fails(subset):
        calls.append("".join(name for name, _ in subset))
        bad = [name for name, _ in subset if name in "cf"]
        return f"QNN error in {bad[0]}" if bad else None

    assert _bisect(groups, fails, "whole graph failed") == [("c", "QNN error in c"), ("f", "QNN error in f")]
    assert len(calls) <= 12  # ~2 log2(n) compiles per culprit, not one per op


def test_a_failure_only_the_whole_graph_shows_names_no_culprit():
    from edgeport.backends.qualcomm.placement import _bisect

    groups = [(name, [i]) for i, name in enumerate("abcd")]
    assert _bisect(groups, lambda subset: None, "whole graph failed") == []


def test_a_sub_graph_is_a_valid_model_with_cut_tensors_as_inputs_and_outputs():
    onnx = pytest.importorskip("onnx")
    from edgeport.backends.qualcomm.onnx_export import export_onnx
    from edgeport.backends.qualcomm.placement import _submodel

    model = export_onnx(partition_of(Fn(lambda x: ((x * 2).relu() + 1).sigmoid()), torch.randn(2, 8))).model
    ops = [n.op_type for n in model.graph.node]
    middle = [ops.index("Relu"), ops.index("Add")]
    sub = _submodel(model, middle)
    onnx.checker.check_model(sub, full_check=True)
    assert [n.op_type for n in sub.graph.node] == ["Relu", "Add"]
    assert len(sub.graph.input) == 1 and len(sub.graph.output) == 1
    assert sub.graph.input[0].name == model.graph.node[ops.index("Mul")].output[0]
