"""keep_ops(): each kept op converts into fewer MIL ops than its decomposition.

This is the measurement behind KEEP_OPS: capture a case once with the op kept and
once fully decomposed, convert both, and count the MIL ops (consts and the fp16 input
cast left out).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

import edgeport  # noqa: E402
from coreml_helpers import Converted, Lambda, export  # noqa: E402
from edgeport.backends.coreml import CoreMLOptions  # noqa: E402
from edgeport.backends.coreml.support import KEEP_OPS  # noqa: E402

aten = torch.ops.aten
image = torch.randn(1, 8, 8, 8)
qkv = torch.randn(1, 2, 6, 8)

CASES = {
    aten.scaled_dot_product_attention.default: (Lambda(lambda q: F.scaled_dot_product_attention(q, q, q)), (qkv,)),
    aten.instance_norm.default: (nn.InstanceNorm2d(8, affine=True), (image,)),
    aten.linear.default: (nn.Linear(8, 4), (torch.randn(2, 5, 8),)),
    aten.matmul.default: (Lambda(torch.matmul), (torch.randn(2, 3, 4, 5), torch.randn(5, 6))),
    aten.pixel_shuffle.default: (nn.PixelShuffle(2), (image,)),
    aten.hardswish.default: (nn.Hardswish(), (image,)),
    aten.hardsigmoid.default: (nn.Hardsigmoid(), (image,)),
    aten.softplus.default: (nn.Softplus(), (image,)),
    aten.mish.default: (nn.Mish(), (image,)),
    aten.prelu.default: (nn.PReLU(8), (image,)),
    aten.pad.default: (nn.ReflectionPad2d(1), (image,)),
}


def mil_op_count(converted: Converted) -> int:
    ops = dict(converted.description.mil_ops)
    ops.pop("cast", None)  # the fp16 casts at the boundary, the same either way
    return sum(ops.values())


def test_every_kept_op_has_a_case(backend):
    assert set(CASES) == backend.keep_ops() == set(KEEP_OPS)


@pytest.mark.parametrize("op", sorted(CASES, key=str), ids=str)
def test_capture_keeps_the_op_and_coremltools_takes_it(backend, op):
    module, inputs = CASES[op]
    program = export(module, inputs)
    kept = [n for n in program.graph.nodes if n.target is op]
    assert kept
    assert backend.support(kept[0], edgeport.SupportContext(program, CoreMLOptions()))


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(CASES, key=str), ids=str)
def test_kept_op_converts_into_fewer_mil_ops(backend, op):
    module, inputs = CASES[op]
    kept = Converted.of(backend, export(module, inputs))
    decomposed = Converted.of(backend, export(module, inputs, keep=()))
    assert mil_op_count(kept) < mil_op_count(decomposed), (kept.description.mil_ops, decomposed.description.mil_ops)
