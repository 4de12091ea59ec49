"""KNOWN_BAD: conversions coremltools accepts but gets wrong, each shown here.

For every entry: support() declines the node with the entry's reason; the same op
where it converts fine is still taken; and, bypassing support, coremltools still gets
it wrong (compile refuses it). When a coremltools upgrade fixes one, the "still wrong"
test fails: drop the entry then.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

import edgeport  # noqa: E402
from coreml_helpers import Lambda, export  # noqa: E402
from edgeport.backends.coreml import CoreMLOptions, toolchain  # noqa: E402
from edgeport.backends.coreml.support import KEEP_OPS, KNOWN_BAD  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

aten = torch.ops.aten
x = torch.randn(2, 5)
ids = torch.randint(0, 9, (2, 5))
image = torch.randn(1, 2, 4, 4)
q, kv = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
KEEP_RMS_NORM = KEEP_OPS | {aten.rms_norm.default}  # as a backend that keeps rms_norm would capture it

# id -> (op the entry covers, wrong case, fine case, keep_ops, how coremltools fails)
#   "float": compile sees an integer output come back as a float feature (BackendError)
#   "raises": coremltools raises on the node (DeclineNodes)
CASES = {
    "integer_floor_div": (aten.div.Tensor_mode, (lambda i: i // 3, (ids,)), (lambda a: a // 3, (x,)), KEEP_OPS, "float"),
    "integer_clamp": (aten.clamp.default, (lambda i: i.clamp(min=0), (ids,)), (lambda i: i.clamp(0, 4), (ids,)), KEEP_OPS, "float"),
    "integer_full": (
        aten.full.default,
        (lambda i: torch.full((2, 5), 7) + i, (ids,)),
        (lambda a: torch.full((2, 5), 7.0) + a, (x,)),
        KEEP_OPS,
        "float",
    ),
    "bool_sum": (aten.sum.dim_IntList, (lambda a: (a > 0).sum(-1), (x,)), (lambda a: a.sum(-1), (x,)), KEEP_OPS, "float"),
    "integer_bound_hardtanh": (
        aten.hardtanh.default,
        (lambda a: F.relu6(a), (x,)),
        (lambda a: F.hardtanh(a, 0.0, 6.0), (x,)),
        KEEP_OPS,
        "raises",
    ),
    "circular_pad": (
        aten.pad.default,
        (lambda a: F.pad(a, (1, 1, 1, 1), mode="circular"), (image,)),
        (lambda a: F.pad(a, (1, 1, 1, 1), mode="reflect"), (image,)),
        KEEP_OPS,
        "raises",
    ),
    "grouped_query_attention": (
        aten.scaled_dot_product_attention.default,
        (lambda a, b: F.scaled_dot_product_attention(a, b, b, enable_gqa=True), (q, kv)),
        (lambda a, b: F.scaled_dot_product_attention(a, b, b), (q, q)),
        KEEP_OPS,
        "raises",
    ),
    "rms_norm_without_eps": (
        aten.rms_norm.default,
        (lambda a: F.rms_norm(a, (5,)), (x,)),
        (lambda a: F.rms_norm(a, (5,), eps=1e-5), (x,)),
        KEEP_RMS_NORM,
        "raises",
    ),
}


def node_of(program, op) -> torch.fx.Node:
    return next(n for n in program.graph.nodes if n.target is op)


def support_of(backend, program, op) -> edgeport.Support:
    return backend.support(node_of(program, op), edgeport.SupportContext(program, CoreMLOptions()))


def test_every_entry_has_a_case():
    covered = {op for op, *_ in CASES.values()}
    assert all(entry.ops & covered for entry in KNOWN_BAD)


@pytest.mark.parametrize("case", sorted(CASES))
def test_support_declines_with_the_entry_reason(backend, case):
    op, (fn, inputs), _, keep, _ = CASES[case]
    answer = support_of(backend, export(Lambda(fn), inputs, keep), op)
    entry = next(e for e in KNOWN_BAD if op in e.ops)
    assert not answer
    assert answer.reason == f"{op}: {entry.reason}"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_op_is_taken_where_it_converts_fine(backend, case):
    op, _, (fn, inputs), keep, _ = CASES[case]
    program = export(Lambda(fn), inputs, keep)
    assert support_of(backend, program, op)
    backend.compile(program, CoreMLOptions())  # and the interface comes back as it went in


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_coremltools_still_gets_it_wrong(backend, case):
    op, (fn, inputs), _, keep, failure = CASES[case]
    program = export(Lambda(fn), inputs, keep)
    if failure == "float":
        with pytest.raises(edgeport.BackendError, match=r"int64.*into feature .* \(FLOAT"):
            backend.compile(program, CoreMLOptions())
    else:
        with pytest.raises(edgeport.DeclineNodes) as declined:
            backend.compile(program, CoreMLOptions())
        assert list(declined.value.reasons) == [node_of(program, op).name]


def test_integer_floor_division_runs_in_fp16():
    """The div entry's reason: integer floor division becomes an fp16 floor_div."""
    ct = toolchain.coremltools()
    program = export(Lambda(lambda i: i // 3), (ids,))
    with toolchain.quiet():
        model = ct.convert(program, minimum_deployment_target=ct.target.iOS17, skip_model_load=True)
    divisions = [op for op in model._mil_program.functions["main"].operations if op.op_type == "floor_div"]
    assert [op.x.dtype for op in divisions] == [types.fp16]
