"""Every op case, written by our TFLite writer and run with LiteRT, against eager torch.

Cases are edgeport's shared conformance cases plus the writer's own (tflite_cases.py).
Each runs twice: captured the way the cpu backend captures (KEEP_OPS kept whole) and
fully decomposed (what any other backend's capture may hand over). The shared cases the
writer declines (writer_declines.py) are checked to be declined with their reason.
"""

from __future__ import annotations

import pytest

from edgeport import DeclineNodes, SupportContext
from edgeport.backends.tflite import PLUMBING, write_tflite, writer_support, written_ops
from edgeport.testing import CASES
from ai_edge_litert import schema_py_generated as schema
from tflite_cases import DECLINED, EXTRA_CASES
from tflite_helpers import capture, lower_cases
from writer_declines import WRITER_ALONE_DECLINES, WRITER_DECLINES

_DECLINES = {**WRITER_DECLINES, **WRITER_ALONE_DECLINES}
ALL_CASES = [*(c for c in CASES if c.name not in _DECLINES), *EXTRA_CASES]
SHARED_DECLINED = [(f"{c.name}-{op}", c, op, words)  # (written at static sizes here: no dynamic case)
                   for c in CASES if "dynamic" not in c.tags for op, words in _DECLINES.get(c.name, {}).items()]
ALL_DECLINED = DECLINED + SHARED_DECLINED
MODES = {"kept": None, "decomposed": ()}


@pytest.fixture(scope="module", params=list(MODES))
def suite(request):
    """All cases lowered as one model, once per capture mode."""
    keep = MODES[request.param]
    return lower_cases(ALL_CASES) if keep is None else lower_cases(ALL_CASES, keep=keep)


def test_writer_supports_every_node_of_every_case(suite):
    ctx = SupportContext(suite.program, None)
    refused = {
        n.name: writer_support(n, ctx).reason
        for n in suite.program.graph.nodes
        if n.op == "call_function" and not writer_support(n, ctx)
    }
    assert refused == {}


def test_every_written_op_is_one_its_node_declares(suite):
    """`written_ops` (what a backend judging TFLite ops asks) covers what was written:
    each op is blamed on the node named by its first output tensor ("conv/bias" -> conv)."""
    ctx = SupportContext(suite.program, None)
    nodes = {n.name: n for n in suite.program.graph.nodes}
    model = schema.Model.GetRootAs(suite.model.data, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    undeclared = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = names[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()]
        node = nodes[graph.Tensors(op.Outputs(0)).Name().decode().split("/", 1)[0]]
        if name not in PLUMBING and name not in written_ops(node, ctx):
            undeclared.add((str(node.target), name))
    assert undeclared == set()


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_case_matches_eager(suite, case):
    assert suite.errors[case.name] <= case.rtol


@pytest.mark.parametrize("name, case, op, words", ALL_DECLINED, ids=[d[0] for d in ALL_DECLINED])
def test_unsupported_is_declined_with_its_reason_and_never_written(name, case, op, words):
    module, inputs = case.build()
    program = capture(module, inputs)
    ctx = SupportContext(program, None)
    answers = {n.name: writer_support(n, ctx) for n in program.graph.nodes if n.op == "call_function"}
    refused = {name: a.reason for name, a in answers.items() if not a}
    assert refused, f"{name}: nothing was declined"
    assert any(op in reason and words in reason for reason in refused.values()), refused
    with pytest.raises(DeclineNodes) as declined:
        write_tflite(program)
    assert declined.value.reasons == refused
