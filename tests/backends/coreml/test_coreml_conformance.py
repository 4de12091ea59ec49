"""The shared conformance cases (edgeport.testing) on the coreml backend.

Each case gets the conformance kit's verdict (as `pytest --edgeport-backend coreml` gives
it). Core ML cannot run off macOS, so there each case is checked as far as Linux goes:
it exports, partitions and compiles without a fallback (the kit's "not run"); the
backend takes every compute node, or the node it leaves carries coremltools' reason (or
a partition rule's).
"""

import pytest

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

from edgeport.testing import CASES  # noqa: E402
from edgeport.testing.kit import Verdict, run_kit_case  # noqa: E402

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
    "buffer_write_read": {"aten.index_put.default": _CONVERT},
    "bool_and_or": {"aten.bitwise_or.Tensor": "coremltools has no converter for aten.bitwise_or.Tensor"},
}
# A case with dynamic dims is declined whole, every node for its symbolic shape.
NO_DYNAMIC = "edgeport converts Core ML partitions with static shapes"
QUICK = {"conv2d", "attention", "embedding", "relu6"}
FP16_RTOL = 2e-2  # on macOS: Core ML computes in fp16 by default, and coreml declares this tolerance for it


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c.name in QUICK else pytest.mark.slow) for c in CASES], ids=lambda c: c.name
)
def test_case_compiles_on_coreml_with_reasons_for_what_it_leaves(backend, case):
    outcome = run_kit_case(backend, case)  # the verdict `pytest --edgeport-backend coreml` gives
    assert outcome.verdict is not Verdict.FAILED, outcome.message
    assert outcome.tolerance == FP16_RTOL
    if backend.availability().can_run:
        assert outcome.error is not None or outcome.verdict is Verdict.DECLINED  # compared against eager on macOS
    else:
        assert outcome.verdict in (Verdict.NOT_RUN, Verdict.DECLINED), outcome.message
    if "dynamic" in case.tags:
        assert outcome.verdict is Verdict.DECLINED, outcome.message
        assert all(NO_DYNAMIC in reason for reason in outcome.declined.values()), outcome.declined
    elif case.name in DECLINED:
        expected = DECLINED[case.name]
        assert set(outcome.declined) == set(expected)
        assert all(words in outcome.declined[op] for op, words in expected.items()), outcome.declined
        assert outcome.delegated < 1.0
    else:
        assert outcome.declined == {}
        assert outcome.delegated == 1.0
