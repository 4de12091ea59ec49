"""The qualcomm backend without compiling: options, support table, availability, import cost."""

import subprocess
import sys

import pytest
import torch

import edgeport
from edgeport.backends.qualcomm import QualcommBackend, QualcommOptions
from edgeport.backends.qualcomm.options import SOCS, provider_options, resolve_soc

from qualcomm_helpers import Fn, node_named, partition_of

QUALCOMM = QualcommBackend()


def verdicts(fn, *inputs):
    """{node name: Support} for every call_function node of fn's edge program."""
    program = partition_of(Fn(fn), *inputs)
    ctx = edgeport.SupportContext(program, QualcommOptions())
    return {n.name: QUALCOMM.support(n, ctx) for n in program.graph.nodes if n.op == "call_function"}


def test_importing_the_plugin_does_not_import_its_toolchain():
    code = (
        "import sys, edgeport.backends.qualcomm as q; q.QualcommBackend().availability(); "
        "print([m for m in ('onnxruntime', 'onnx', 'onnxscript', 'qai_hub') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "soc_model", "htp_arch"), [("SM8550", 43, 73), ("SM8650", 57, 75), ("SM8750", 69, 79)]
)
def test_snapdragon_names_map_to_qnn_soc_ids(name, soc_model, htp_arch):
    options = provider_options(QualcommOptions(soc=name))
    assert options["soc_model"] == str(soc_model) and options["htp_arch"] == str(htp_arch)
    assert options["backend_type"] == "htp" and options["enable_htp_fp16_precision"] == "1"
    assert resolve_soc(name.lower() + "-ab") == SOCS[name]


def test_an_unknown_soc_lists_the_known_ones():
    with pytest.raises(edgeport.BackendError) as info:
        provider_options(QualcommOptions(soc="SM1234"))
    assert "SM1234" in str(info.value) and "SM8650 (Snapdragon 8 Gen 3)" in info.value.hint


@pytest.mark.parametrize("scheme", ["int8", "A16W8"])
def test_a_quantization_scheme_as_precision_points_to_quantize(scheme):
    with pytest.raises(edgeport.BackendError, match="is a quantization scheme") as info:
        QualcommOptions(precision=scheme)
    assert f"--quantize {scheme.lower()}" in info.value.hint
    with pytest.raises(edgeport.BackendError, match="unknown precision"):
        provider_options(QualcommOptions(precision="fp8"))


def test_quantized_partitions_quantize_their_io_on_htp():
    """QNN's default would leave a quantized graph's input quantize and output
    dequantize to ONNX Runtime's CPU EP, which a qualcomm step never uses."""
    assert provider_options(QualcommOptions())["offload_graph_io_quantization"] == "0"


def test_options_build_from_cli_strings():
    from edgeport.backend import options_from_dict

    assert options_from_dict(QUALCOMM, {"soc": "SM8750"}) == QualcommOptions(soc="SM8750")


def test_availability_labels_the_simulator_on_x86_linux():
    pytest.importorskip("onnxruntime_qnn")
    availability = QUALCOMM.availability()
    assert availability.can_compile and availability.can_run
    if sys.platform == "linux" and "x86" in __import__("platform").machine():
        assert availability.runs_on == "simulator" and "simulator" in availability.why


def test_a_cnn_block_is_supported_node_by_node():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(), torch.nn.Flatten())
    program = partition_of(conv, torch.randn(1, 3, 8, 8))
    ctx = edgeport.SupportContext(program, QualcommOptions())
    answers = {n.name: QUALCOMM.support(n, ctx) for n in program.graph.nodes if n.op == "call_function"}
    assert all(answers.values()), {k: v.reason for k, v in answers.items() if not v}


@pytest.mark.parametrize(
    ("fn", "inputs", "node", "reason"),
    [
        (torch.erf, (torch.randn(2, 8),), "erf", "no Erf"),
        (lambda x: x.double() * 2, (torch.randn(2, 8),), "mul", "float64 tensors not supported"),
        (lambda x: x * 2, (torch.randn(2, 8).bfloat16(),), "mul", "bfloat16 tensors not supported"),
        (lambda x: x.view(1, 2, 1, 2, 1, 4) + 1, (torch.randn(2, 8),), "add", "rank-6 tensor"),
        (lambda x: torch.randn(2, 3) + x, (torch.randn(2, 3),), "randn", "random ops"),
        (lambda x: torch.nonzero(x), (torch.randn(2, 3),), "nonzero", "no QNN HTP lowering known"),
    ],
)
def test_support_declines_with_a_reason_naming_the_op(fn, inputs, node, reason):
    answer = verdicts(fn, *inputs)[node]
    assert not answer and reason in answer.reason and "aten." in answer.reason


def test_max_pool_is_taken_unless_its_indices_are_read():
    pooled = verdicts(lambda x: torch.nn.functional.max_pool2d(x, 2), torch.randn(1, 2, 4, 4))
    assert pooled["max_pool2d_with_indices"]
    with_indices = verdicts(
        lambda x: torch.nn.functional.max_pool2d(x, 2, return_indices=True)[1], torch.randn(1, 2, 4, 4)
    )
    assert "indices" in with_indices["max_pool2d_with_indices"].reason


def test_where_takes_a_bool_condition():
    assert all(verdicts(lambda x: torch.where(x > 0, x, 0.5 * x), torch.randn(2, 8)).values())



def test_an_infinity_known_at_export_is_declined_on_its_way_to_an_output():
    """special.entr (the OpInfo sweep): export folds its ``scalar_tensor(-inf)`` into a
    stored constant, and the where reading it passes the -inf on to the output through
    the next where. HTP saturates inf, so both are declined. A -inf mask added to scores
    before a softmax (an LLM's causal mask) ends in the softmax: it stays taken."""
    from edgeport.fold import fold_constants

    def fn(x):
        entr = torch.where(x > 0, x, torch.where(x == 0, 0.0, float("-inf")))
        causal = torch.zeros(8).masked_fill(torch.arange(8) > 4, float("-inf"))
        return entr, (x * 2 + causal).softmax(-1)

    program = fold_constants(partition_of(Fn(fn), torch.randn(2, 8))).program
    assert not any(n.target is torch.ops.aten.scalar_tensor.default for n in program.graph.nodes)  # it folded
    ctx = edgeport.SupportContext(program, QualcommOptions(), QUALCOMM.prepare(program, QualcommOptions()))
    answers = {n.name: QUALCOMM.support(n, ctx) for n in program.graph.nodes if n.op == "call_function"}
    declined = {name for name, answer in answers.items() if not answer}
    assert declined == {"where", "where_1"}, {k: v.reason for k, v in answers.items()}
    reason = answers["where"].reason
    assert "passes an infinity known at export" in reason and "saturates inf" in reason


class _MaskedScores(torch.nn.Module):
    """Scores plus a stored additive -inf mask, a softmax, then a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 4)
        self.register_buffer("mask", torch.zeros(8).masked_fill(torch.arange(8) > 4, float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj((x * 2 + self.mask).softmax(-1))


def _declined_with_reasons(model: torch.nn.Module, x: torch.Tensor) -> dict[str, str]:
    from edgeport.fold import fold_constants

    program = fold_constants(partition_of(model, x)).program  # as export hands it over: weight.T folded
    ctx = edgeport.SupportContext(program, QualcommOptions(), QUALCOMM.prepare(program, QualcommOptions()))
    answers = {n.name: QUALCOMM.support(n, ctx) for n in program.graph.nodes if n.op == "call_function"}
    return {name: answer.reason for name, answer in answers.items() if not answer}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_weight_holding_nan_or_inf_is_declined_naming_it(bad):
    """A NaN in a weight was taken: HTP computes it as 131008, and the model gave numbers
    (98304; a softmax after it a one-hot) where torch gives NaN. An infinity in a weight
    a softmax followed was taken too (it absorbs an infinity), but a linear makes NaN
    of inf * 0 and inf - inf. Every node the value reaches is declined, with the weight
    named; the additive -inf mask before a softmax stays taken."""
    model = _MaskedScores().eval()
    with torch.no_grad():
        model.proj.weight[1, 2] = bad
    declined = _declined_with_reasons(torch.nn.Sequential(model, torch.nn.Softmax(-1)), torch.randn(2, 8))
    assert set(declined) == {"addmm", "_softmax_1"}, declined
    made = "a NaN from" if bad != bad else "a NaN that addmm makes of the infinity in"
    assert f"passes {made} 0.proj.weight" in declined["addmm"] and "QNN HTP has no NaN" in declined["addmm"]
    assert _declined_with_reasons(_MaskedScores().eval(), torch.randn(2, 8)) == {}  # the mask alone: all taken


def test_a_bias_holding_inf_passes_an_infinity_not_a_nan():
    model = torch.nn.Linear(8, 4).eval()
    with torch.no_grad():
        model.bias[0] = float("-inf")
    declined = _declined_with_reasons(model, torch.randn(2, 8))
    assert declined == {"addmm": "aten.addmm.default: passes an infinity known at export from bias on to the "
                                 "output; QNN HTP computes in fp16 and saturates inf to 65536, so an infinite "
                                 "result comes back finite"}


@pytest.mark.parametrize("op", ["sort", "topk"])
def test_sorted_indices_are_declined_because_fp16_ties_reorder_them(op):
    """The OpInfo sweep's sort and argsort: integers up to 8000 tie in fp16 on HTP, and
    their indices came back in another order; the sorted values alone are right."""
    x = torch.randperm(8000).float().reshape(2, 4000)
    take = (lambda t: t.sort(-1)) if op == "sort" else (lambda t: t.topk(5, -1))
    with_indices = verdicts(lambda t: take(t)[1], x)[op]
    assert not with_indices and "tie" in with_indices.reason and f"aten.{op}" in with_indices.reason
    assert verdicts(lambda t: take(t)[0] * 2, x)[op]


def test_a_partition_returning_only_constants_is_declined_not_compiled():
    """QNN compiles a graph of constants to no EPContext model, and the partition fell
    back (the OpInfo sweep's linspace.tensor_overload); its outputs are declined instead.
    Beside a computed output, QNN compiles a constant one fine: it is kept."""
    from edgeport.backends.qualcomm.constant_outputs import constant_outputs

    program = partition_of(Fn(lambda x: (torch.full((3,), 2.0), torch.ones(2) * 3)), torch.randn(2))
    with pytest.raises(edgeport.DeclineNodes) as info:
        QUALCOMM.compile(program, QualcommOptions())
    assert set(info.value.reasons) == {"full", "mul"} and "depends on no input" in info.value.reasons["full"]
    zeroed = partition_of(Fn(lambda x: torch.zeros_like(x.clone())), torch.randn(2))  # zero_: only x's shape
    assert set(constant_outputs(zeroed)) == {"full_like"}
    assert constant_outputs(partition_of(Fn(lambda x: (torch.full((3,), 2.0), x.sum())), torch.randn(2))) == {}


@pytest.mark.parametrize("dims", [(), ([],)])
def test_amax_over_every_dim_exports_with_its_dims_listed(dims):
    """torch.onnx cannot export amax/amin with no dim given (the OpInfo sweep's aminmax
    fell back); the export lists the dims and leaves the partition's graph as it was."""
    pytest.importorskip("onnxscript")
    from edgeport.backends.qualcomm.onnx_export import export_onnx

    program = partition_of(Fn(lambda t: (torch.ops.aten.amax.default(t, *dims), torch.ops.aten.amin.default(t, *dims))),
                           torch.randn(5, 5, 5))
    before = str(program.graph)
    ops = sorted(node.op_type for node in export_onnx(program).model.graph.node)
    assert ops == ["ReduceMax", "ReduceMin"] and str(program.graph) == before
    scalar = partition_of(Fn(lambda t: torch.ops.aten.amax.default(t, []) + 1), torch.randn(()))
    assert not QUALCOMM.support(node_named(scalar, "amax"), edgeport.SupportContext(scalar, QualcommOptions()))


def test_pow_is_taken_only_with_a_constant_integer_exponent():
    """HTP gives -131008/131008 where torch gives NaN for a negative base to a
    fractional power (the OpInfo sweep's __rpow__); integer powers are exact."""
    x = torch.randn(2, 8)
    assert verdicts(lambda t: t ** 2, x)["pow_1"]
    for fn, inputs in ((lambda t: t ** 0.5, (x,)), (lambda t, e: t ** e, (x, x))):
        answer = verdicts(fn, *inputs)["pow_1"]
        assert not answer and "NaN" in answer.reason
