"""The conformance kit on the mediatek backend (the verdicts `pytest --edgeport-backend
mediatek` gives): what it takes matches eager at the tolerance it declares, and every
node it leaves carries the rule that left it."""

from __future__ import annotations

import pytest

from edgeport.backends.mediatek import MediatekBackend
from edgeport.testing import CASES
from edgeport.testing.kit import Verdict, run_kit
from writer_declines import writer_reason_expected

# A reason names one of: the plugin's op list, NeuroPilot's ranks or dtypes (all
# "MediaTek NeuroPilot: ..."), the partition rule that keeps a lone data move off the
# APU, or the writer's own limit (the same as on cpu: writer_declines.py).
RULES = ("MediaTek NeuroPilot: ", "partition holds only ops the backend never takes alone")


def _check(run):
    assert len(run.outcomes) == len(CASES)
    assert {o.case: o.message for o in run.outcomes if o.verdict is Verdict.FAILED} == {}
    unnamed = {(o.case, op): reason for o in run.outcomes for op, reason in o.declined.items()
               if not reason.startswith(RULES) and not writer_reason_expected(o.case, op, reason)}
    assert unnamed == {}
    # support's table agreed with what the writer wrote: compile declined nothing
    late = {(o.case, op): reason for o in run.outcomes for op, reason in o.declined.items()
            if "(written for node" in reason}
    assert late == {}
    return {o.case: o for o in run.outcomes}


@pytest.mark.slow
def test_every_case_passes_and_every_decline_names_its_rule():
    outcomes = _check(run_kit(MediatekBackend(), cases=CASES))  # float cases: it offers no quantization scheme
    whole = ("conv2d", "conv_bn_relu", "inverted_residual", "mlp_gelu", "layer_norm")
    assert all(outcomes[name].delegated == 1.0 for name in whole)


@pytest.mark.slow
def test_every_case_passes_with_fp16_weights_at_the_tolerance_the_backend_declares():
    outcomes = _check(run_kit(MediatekBackend(), {"fp16": True}, cases=CASES))
    # fp16 weights round each weight to 11 significant bits: mediatek declares 1e-2 for them
    assert outcomes["conv2d"].tolerance == 1e-2
