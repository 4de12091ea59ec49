"""The shared conformance cases on the mediatek backend: what it takes matches eager, and
every node it leaves carries the rule that left it."""

from __future__ import annotations

import pytest

from edgeport.backends.mediatek import MediatekBackend
from edgeport.testing import CASES, run_conformance
from writer_declines import writer_reason_expected

# A reason names one of: the plugin's op list, NeuroPilot's ranks or dtypes (all
# "MediaTek NeuroPilot: ..."), the partition rule that keeps a lone data move off the
# APU, or the writer's own limit (the same as on cpu: writer_declines.py).
RULES = ("MediaTek NeuroPilot: ", "partition holds only ops the backend never takes alone")

# fp16 weights round each weight to 11 significant bits.
FP16_RTOL = 1e-2


def _check(results):
    assert len(results) == len(CASES)
    failed = {r.name: (r.error, r.max_error) for r in results if not r.passed}
    assert failed == {}
    unnamed = {(r.name, op): reason for r in results for op, reason in r.reasons.items()
               if not reason.startswith(RULES) and not writer_reason_expected(r.name, op, reason)}
    assert unnamed == {}
    # support's table agreed with what the writer wrote: compile declined nothing
    late = {(r.name, op): reason for r in results for op, reason in r.reasons.items() if "(written for node" in reason}
    assert late == {}
    return {r.name: r for r in results}


@pytest.mark.slow
def test_every_case_passes_and_every_decline_names_its_rule():
    results = _check(run_conformance(MediatekBackend()))
    whole = ("conv2d", "conv_bn_relu", "inverted_residual", "mlp_gelu", "layer_norm")
    assert all(results[name].delegated == 1.0 for name in whole)


@pytest.mark.slow
def test_every_case_passes_with_fp16_weights_at_the_looser_tolerance():
    _check(run_conformance(MediatekBackend(), options={"fp16": True}, rtol=FP16_RTOL))
