"""The shared conformance cases (edgeport.testing) on the coreml backend.

Core ML cannot run here, so each case is checked as far as Linux goes: it exports,
partitions and compiles; the backend takes every compute node, or the node it leaves
carries coremltools' reason (or a partition rule's).
"""

import pytest

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

from edgeport.testing import CASES, run_case  # noqa: E402

# case -> {op left to portable: words of its reason}; every other case is fully taken.
# The "could not convert" ones fail in coremltools at compile (the node it names is
# declined, else the partition falls back): coremltools 9.0 has no divisor_override,
# dilated or 3d ceil-mode pooling, no pooling indices, no output_padding on 3d transposed
# convolution, no reduce_max of bools.
_CONVERT = "coremltools could not convert"
DECLINED = {
    "relu6": {"aten.hardtanh.default": "aten.hardtanh.default: coremltools 9.0 cannot convert hardtanh"},
    "slice": {"aten.slice.Tensor": "partition holds only ops the backend never takes alone"},
    "select": {"aten.select.int": "partition holds only ops the backend never takes alone"},
    "avg_pool2d_divisor_override": {"aten.avg_pool2d.default": _CONVERT},
    "max_pool2d_dilated": {"aten.max_pool2d_with_indices.default": _CONVERT},
    "max_pool2d_indices": {"aten.max_pool2d_with_indices.default": _CONVERT},
    "pool3d": {"aten.avg_pool3d.default": _CONVERT},
    "conv_transpose3d_output_padding": {"aten.convolution.default": _CONVERT},
    "reduce_bool": {"aten.amax.default": _CONVERT,
                    "aten.sum.dim_IntList": "aten.sum.dim_IntList: coremltools 9.0 counts booleans in floating point"},
}
QUICK = {"conv2d", "attention", "embedding", "relu6"}
FP16_RTOL = 2e-2  # on macOS: Core ML computes in fp16 by default (the cases' own rtol assumes fp32)


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c.name in QUICK else pytest.mark.slow) for c in CASES], ids=lambda c: c.name
)
def test_case_compiles_on_coreml_with_reasons_for_what_it_leaves(backend, case):
    result = run_case(backend, case, rtol=FP16_RTOL)
    assert result.passed and not result.error, result.error
    if backend.availability().can_run:
        assert result.max_error is not None  # compared against eager on macOS
    if case.name in DECLINED:
        expected = DECLINED[case.name]
        assert set(result.reasons) == set(expected)
        assert all(words in result.reasons[op] for op, words in expected.items()), result.reasons
        assert result.delegated < 1.0
    else:
        assert result.reasons == {}
        assert result.delegated == 1.0
