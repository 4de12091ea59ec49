"""The example models lower to qualcomm with every node on QNN, and match eager in fp16.

Whole models through edgeport.export (support table, partitioning, compile with verified
placement), then run in QNN's HTP simulator. Tolerance: cosine >= 0.999 on the logits.
Also the conformance library, with an fp16 tolerance.
"""


import pytest
import torch

import edgeport
from edgeport.testing import CASES, registry_for
from edgeport.testing.kit import Verdict, run_kit

from example_models import load_example
from qualcomm_helpers import MIN_COSINE, cosine

pytestmark = pytest.mark.slow  # each model: ~5-15 s of capture, ONNX export and QNN compile



@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "transformer_encoder"])
def test_example_model_runs_entirely_on_qnn_and_matches_eager(backend, name):
    model, inputs = load_example(name)
    program = edgeport.export(model, inputs, ["qualcomm"], options={"qualcomm": {"soc": "SM8650"}},
                              registry=registry_for(backend))
    nodes = program.report()["nodes"]
    off_qnn = {n["name"]: n["reasons"] for n in nodes if n["backend"] != "qualcomm"}
    assert not off_qnn
    with torch.no_grad():
        assert cosine(program(*inputs).numpy(), model(*inputs).numpy()) >= MIN_COSINE


# The relative max error (against the largest reference value) qualcomm declares for fp16
# HTP (`tolerance`); the worst the conformance cases show is 5e-3 (mlp_gelu), fp32 eager
# being the reference.
FP16_RTOL = 1e-2


# Cases qualcomm does not take whole: words of the reason for each node it leaves. The
# "wrong values" ones QNN compiles but computes wrongly (test_qualcomm_corrections.py).
_WRONG = "QNN HTP returns wrong values"
DECLINED = {
    "slice": {"aten.slice.Tensor": "never takes alone"},
    "select": {"aten.select.int": "never takes alone"},
    "avg_pool2d_divisor_override": {"aten.avg_pool2d.default": "torch.onnx drops divisor_override"},
    "max_pool2d_dilated": {"aten.max_pool2d_with_indices.default": "QNN refuses dilated pooling"},
    "max_pool2d_indices": {"aten.max_pool2d_with_indices.default": "int64 tensors not supported"},
    "pool3d": {"aten.avg_pool3d.default": "no QNN HTP lowering known",
               "aten.max_pool3d_with_indices.default": "no QNN HTP lowering known"},
    **{case: {"aten.convolution.default": _WRONG} for case in (
        "conv_transpose3d_groups", "conv_transpose3d_depthwise", "conv_transpose3d_unequal_padding",
        "conv_transpose3d_output_padding", "conv_transpose2d_depthwise_output_padding",
        "conv_transpose1d_groups_output_padding", "conv1d_dilated_padded",
    )},
    "conv_transpose2d_groups_dilation": {"aten.convolution.default": "QNN: QNN EP: QNN's TransposeConv2d"},
    "conv3d_dilated": {"aten.convolution.default": "QNN: "},  # refused at compile
    "mean_int_to_float": {"aten.mean.dim": "int64 tensors not supported"},
    "reduce_bool": {"aten.sum.dim_IntList": "bool tensors not supported",
                    "aten.amax.default": "bool tensors not supported"},
    "buffer_write_read": {"aten.index_put.default": "no QNN HTP lowering known"},
    "topk": {"aten.topk.default": "its indices are read: QNN HTP compares in fp16"},
}
# A case with dynamic dims is declined whole: a QNN context is compiled for static sizes.
NO_DYNAMIC = "QNN HTP has no dynamic shapes"


def test_conformance_kit_passes_in_fp16_and_cases_are_taken_whole_or_declined_with_their_reason(backend):
    """The kit's verdicts (as `pytest --edgeport-backend qualcomm` gives them), at the
    tolerance qualcomm declares for its default fp16 precision."""
    run = run_kit(backend, cases=CASES)  # the float cases (the int8 ones: test_qualcomm_quantized.py)
    assert {o.case: o.message for o in run.outcomes if o.verdict is Verdict.FAILED} == {}
    assert {o.tolerance for o in run.outcomes} == {FP16_RTOL}
    dynamic = {c.name for c in CASES if "dynamic" in c.tags}
    for o in run.outcomes:
        if o.case in dynamic:
            assert o.verdict is Verdict.DECLINED and any(NO_DYNAMIC in r for r in o.declined.values()), o.declined
            continue
        expected = DECLINED.get(o.case, {})
        assert set(o.declined) == set(expected), (o.case, o.declined)
        assert all(words in o.declined[op] for op, words in expected.items()), (o.case, o.declined)
        assert (o.delegated == 1.0) == (not expected), (o.case, o.delegated)
