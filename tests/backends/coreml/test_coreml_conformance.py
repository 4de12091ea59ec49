"""The shared conformance cases (edgeport.testing) on the coreml backend.

Core ML cannot run here, so each case is checked as far as Linux goes: it exports,
partitions and compiles; the backend takes every compute node, or the node it leaves
carries coremltools' reason (or a partition rule's).
"""

import pytest

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

from edgeport.testing import CASES, run_case  # noqa: E402

# case -> (op left to portable, how its reason starts); every other case is fully taken
DECLINED = {
    "relu6": ("aten.hardtanh.default", "aten.hardtanh.default: coremltools 9.0 cannot convert hardtanh"),
    "slice": ("aten.slice.Tensor", "partition holds only ops the backend never takes alone"),
    "select": ("aten.select.int", "partition holds only ops the backend never takes alone"),
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
        op, reason = DECLINED[case.name]
        assert list(result.reasons) == [op]
        assert result.reasons[op].startswith(reason)
        assert result.delegated < 1.0
    else:
        assert result.reasons == {}
        assert result.delegated == 1.0
