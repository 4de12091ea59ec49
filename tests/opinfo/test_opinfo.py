"""torch's OpInfo ops as one-op modules on cpu, qualcomm and mediatek: no crash and no
wrong answer; a decline is fine (it is a skip here, with the backend's reasons), and so
is a sample whose values leave the range of the fp16 an fp16 backend computes in (a skip
saying so).

CI runs `CI_OPS`, a fixed subset covering the ops the backends take (and the ops the
sweep once found crashing or wrong); ``EDGEPORT_OPINFO=all`` runs every float32 op in
``op_db`` (the full sweep; `python tests/opinfo/sweep.py` runs the same and prints the
counts per backend). The judgement is `opinfo_sweep.sweep_op`'s.
"""

from __future__ import annotations

import os

import pytest

from opinfo_sweep import OpCase, Verdict, op_cases, sweep_op
from sweep_backends import SWEPT_BACKENDS

pytest.importorskip("expecttest")  # torch.testing._internal imports it
pytestmark = pytest.mark.slow

CI_OPS = [
    # elementwise and activations
    "abs", "add", "mul", "sub", "div.no_rounding_mode", "pow", "maximum", "clamp", "where", "exp", "log", "sqrt",
    "rsqrt", "sigmoid", "tanh", "nn.functional.relu", "nn.functional.gelu", "nn.functional.silu",
    # matrix products, convolution, pooling, normalization
    "addmm", "matmul", "bmm", "nn.functional.linear", "nn.functional.conv2d", "nn.functional.max_pool2d",
    "nn.functional.avg_pool2d", "nn.functional.layer_norm", "nn.functional.batch_norm", "softmax",
    # reductions, data movement, indexing
    "mean", "sum", "amax", "max.reduction_with_dim", "argmax", "cat", "permute", "reshape", "transpose",
    "squeeze", "unsqueeze", "expand", "nn.functional.embedding", "nn.functional.pad.constant",
    "nn.functional.interpolate.bilinear",
    # what the sweep found crashing or wrong, fixed (docs/coverage.md)
    "ceil", "masked.amax", "masked.logsumexp", "linalg.pinv.singular", "special.entr", "sort", "argsort", "aminmax",
    "zero_", "item", "index_select", "__rpow__", "nn.functional.interpolate.trilinear",
    # lowered since the sweep (issue 13, item 3)
    "index_put", "index_copy",
    # lowered since the sweep (issue 13, the zoo's wav2vec2)
    "nn.functional.group_norm",
]
OPS = None if os.environ.get("EDGEPORT_OPINFO") == "all" else CI_OPS


def _op_names() -> list[str]:
    if OPS is not None:
        return OPS
    from opinfo_sweep import float32_opinfos, op_name

    return [op_name(info) for info in float32_opinfos()]


@pytest.fixture(scope="module")
def cases() -> dict[str, OpCase | tuple[str, str]]:
    """Each op's case (module, inputs, eager answer), built once: op_db is slow to load."""
    return {case.name if isinstance(case, OpCase) else case[0]: case for case in op_cases(set(_op_names()))}


@pytest.mark.parametrize("backend", list(SWEPT_BACKENDS))
@pytest.mark.parametrize("op", _op_names())
def test_the_op_is_delegated_right_or_declined(cases, op, backend):
    case = cases[op]
    if not isinstance(case, OpCase):
        pytest.skip(f"not swept: {case[1]}")
    availability = SWEPT_BACKENDS[backend].availability()
    if not (availability.can_compile and availability.can_run):
        pytest.skip(f"{backend} cannot compile and run here: {availability.why}")
    outcome = sweep_op(case, SWEPT_BACKENDS[backend])
    if outcome.verdict in (Verdict.DECLINED, Verdict.FP16_RANGE):
        pytest.skip(f"{outcome.verdict.value}: {outcome.detail[:200]}")
    assert outcome.verdict is Verdict.DELEGATED, f"{outcome.verdict.value}: {outcome.detail}"


def test_the_ci_subset_names_ops_that_exist():
    from opinfo_sweep import float32_opinfos, op_name

    assert set(CI_OPS) <= {op_name(info) for info in float32_opinfos()}


def test_a_sample_beyond_fp16_is_told_apart_from_a_wrong_answer():
    """rms_norm's sample squares values near 800, soft_margin_loss's answer is 3e-7: both
    outside the range of the fp16 QNN HTP computes in, so their off answers on qualcomm
    are counted apart, not as lowering bugs."""
    from opinfo_sweep import fp16_range_breach

    cases = {case.name: case for case in op_cases({"nn.functional.rms_norm", "nn.functional.soft_margin_loss", "abs"})}
    assert "beyond fp16's 65504" in fp16_range_breach(cases["nn.functional.rms_norm"], {"pow_1"})
    assert "smallest normal" in fp16_range_breach(cases["nn.functional.soft_margin_loss"], {"log1p"})
    assert fp16_range_breach(cases["abs"], set()) == ""
