"""Every correction compile-time verification made to the support table, proven on real QNN.

Each case is a node the table declines because QNN (2.51, onnxruntime-qnn 2.7.0) refused
it. The test checks both halves: support() says no, and QNN still refuses when handed the
node anyway. If a QNN upgrade starts taking one, its test fails: drop that row.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgeport
from edgeport.backends.qualcomm import QualcommOptions

from qualcomm_helpers import Fn, max_abs, node_named, partition_of

pytestmark = pytest.mark.slow  # one real QNN compile per case (~1-2 s each)

F32 = torch.randn(2, 8)
I32 = torch.arange(16, dtype=torch.int32).reshape(2, 8)
I64 = torch.arange(16).reshape(2, 8)
IMAGE = torch.randn(1, 4, 8, 8)

REFUSED = [
    ("erf", torch.erf, (F32,), "erf"),
    ("fmod", lambda x: torch.fmod(x, 0.3), (F32,), "fmod"),
    ("prod", lambda x: x.prod(-1), (F32,), "prod"),
    ("scatter", lambda x: x.scatter(1, torch.tensor([[0, 1], [2, 3]]), 1.0), (F32,), "scatter"),
    ("rank6", lambda x: x.view(1, 2, 1, 2, 1, 4) + 1, (F32,), "add"),
    ("int64_rounding_div", lambda x: torch.div(x, 3, rounding_mode="trunc"), (I64,), "div"),
    ("integer_bitwise_and", lambda x: x & 3, (I32,), "bitwise_and"),
    ("adaptive_pool_uneven", lambda x: F.adaptive_avg_pool2d(x, 3), (IMAGE,), "_adaptive_avg_pool2d"),
    ("max_pool_indices", lambda x: F.max_pool2d(x, 2, return_indices=True)[1], (IMAGE,), "max_pool2d_with_indices"),
    ("float64", lambda x: x * 2, (F32.double(),), "mul"),
]


def test_replicate_padding_is_declined_because_htp_returns_wrong_values(backend):
    from edgeport.backends.qualcomm.support import KEEP_OPS

    x = torch.randn(1, 4, 8, 8)
    fn = Fn(lambda t: F.pad(t, (1, 1, 1, 1), mode="replicate"))
    table = torch.export.default_decompositions()
    for op in KEEP_OPS:
        table.pop(op, None)
    program = torch.export.export(fn, (x,)).run_decompositions(table)
    answer = backend.support(node_named(program, "pad"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "wrong values" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert max_abs(outputs[0], fn(x).numpy()) > 0.1, "HTP replicate Pad is right now: take it again"


@pytest.mark.parametrize(("case", "fn", "inputs", "node"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_table_declines_what_qnn_refuses(backend, case, fn, inputs, node):
    program = partition_of(Fn(fn), *inputs)
    answer = backend.support(node_named(program, node), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer, f"support() now takes {node}"
    with pytest.raises(edgeport.DeclineNodes) as info:
        backend.compile(program, QualcommOptions())
    assert node in info.value.reasons
    assert info.value.reasons[node].startswith("QNN: ")


def test_index_is_declined_because_htp_gathernd_returns_wrong_values(backend):
    # QNN takes this GatherND and compiles it, but the simulator's answer is wrong for
    # rank-3 data: a correction found by comparing outputs, not by a refusal.
    x = torch.randn(2, 8, 4)
    fn = Fn(lambda t: t[:, torch.tensor([1, 0, 1, 2])])
    program = partition_of(fn, x)
    answer = backend.support(node_named(program, "index"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "wrong values" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert max_abs(outputs[0], fn(x).numpy()) > 0.1, "HTP GatherND is right now: take aten.index again"
    assert np.isfinite(outputs[0]).all()
