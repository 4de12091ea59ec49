"""Every correction compile-time verification made to the support table, proven on real QNN.

Each case is a node the table declines because QNN (2.51, onnxruntime-qnn 2.7.0) refused
it. The test checks both halves: support() says no, and QNN still refuses when handed the
node anyway. If a QNN upgrade starts taking one, its test fails: drop that row.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgeport
from edgeport.backends.qualcomm import QualcommOptions
from edgeport.testing import registry_for

from qualcomm_helpers import Fn, max_abs, node_named, partition_of

pytestmark = pytest.mark.slow  # one real QNN compile per case (~1-2 s each)

F32 = torch.randn(2, 8)
I32 = torch.arange(16, dtype=torch.int32).reshape(2, 8)
I64 = torch.arange(16).reshape(2, 8)
IMAGE = torch.randn(1, 4, 8, 8)

REFUSED = [
    ("erf", torch.erf, (F32,), "erf"),
    ("fmod", lambda x: torch.fmod(x, 0.3), (F32,), "fmod"),
    ("prod", lambda x: x.prod(-1), (F32,), "prod"),
    ("scatter", lambda x: x.scatter(1, torch.tensor([[0, 1], [2, 3]]), 1.0), (F32,), "scatter"),
    ("rank6", lambda x: x.view(1, 2, 1, 2, 1, 4) + 1, (F32,), "add"),
    ("int64_rounding_div", lambda x: torch.div(x, 3, rounding_mode="trunc"), (I64,), "div"),
    ("integer_bitwise_and", lambda x: x & 3, (I32,), "bitwise_and"),
    ("adaptive_pool_uneven", lambda x: F.adaptive_avg_pool2d(x, 3), (IMAGE,), "_adaptive_avg_pool2d"),
    ("max_pool_indices", lambda x: F.max_pool2d(x, 2, return_indices=True)[1], (IMAGE,), "max_pool2d_with_indices"),
    ("float64", lambda x: x * 2, (F32.double(),), "mul"),
]


def test_replicate_padding_is_declined_because_htp_returns_wrong_values(backend):
    from edgeport.backends.qualcomm.support import KEEP_OPS

    x = torch.randn(1, 4, 8, 8)
    fn = Fn(lambda t: F.pad(t, (1, 1, 1, 1), mode="replicate"))
    table = torch.export.default_decompositions()
    for op in KEEP_OPS:
        table.pop(op, None)
    program = torch.export.export(fn, (x,)).run_decompositions(table)
    answer = backend.support(node_named(program, "pad"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "wrong values" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert max_abs(outputs[0], fn(x).numpy()) > 0.1, "HTP replicate Pad is right now: take it again"


@pytest.mark.parametrize(("case", "fn", "inputs", "node"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_table_declines_what_qnn_refuses(backend, case, fn, inputs, node):
    program = partition_of(Fn(fn), *inputs)
    answer = backend.support(node_named(program, node), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer, f"support() now takes {node}"
    with pytest.raises(edgeport.DeclineNodes) as info:
        backend.compile(program, QualcommOptions())
    assert node in info.value.reasons
    assert info.value.reasons[node].startswith("QNN: ")


def test_index_is_declined_because_htp_gathernd_returns_wrong_values(backend):
    # QNN takes this GatherND and compiles it, but the simulator's answer is wrong for
    # rank-3 data: a correction found by comparing outputs, not by a refusal.
    x = torch.randn(2, 8, 4)
    fn = Fn(lambda t: t[:, torch.tensor([1, 0, 1, 2])])
    program = partition_of(fn, x)
    answer = backend.support(node_named(program, "index"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "wrong values" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert max_abs(outputs[0], fn(x).numpy()) > 0.1, "HTP GatherND is right now: take aten.index again"
    assert np.isfinite(outputs[0]).all()


# -- attribute combinations QNN compiles but computes wrongly -------------------------------
# Each: support() declines the node, and compiled anyway (compile() never asks support),
# QNN's answer is still wrong. ONNX Runtime's CPU EP gets the same ONNX right (see
# test_torch_onnx_is_right_where_qnn_is_wrong), so the error is QNN's.

WRONG_ON_QNN = [  # (case, function of input/weight/bias, input shape, weight shape, output channels)
    ("conv_transpose3d_groups", lambda x, w, b: F.conv_transpose3d(x, w, b, groups=3), (1, 6, 5, 5, 5),
     (6, 2, 3, 3, 3), 6),
    ("conv_transpose3d_depthwise", lambda x, w, b: F.conv_transpose3d(x, w, b, groups=6), (1, 6, 5, 5, 5),
     (6, 1, 3, 3, 3), 6),
    ("conv_transpose3d_unequal_padding", lambda x, w, b: F.conv_transpose3d(x, w, b, padding=(0, 1, 1)),
     (1, 4, 5, 5, 5), (4, 6, 3, 3, 3), 6),
    # the output_padding border, which only the bias reaches, comes back without it
    ("conv_transpose3d_output_padding", lambda x, w, b: F.conv_transpose3d(x, w, b, stride=2, output_padding=1),
     (1, 4, 5, 5, 5), (4, 6, 3, 3, 3), 6),
    ("conv_transpose2d_depthwise_output_padding",
     lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=4), (1, 4, 6, 6),
     (4, 1, 3, 3), 4),
    ("conv1d_dilated_padded", lambda x, w, b: F.conv1d(x, w, b, padding=2, dilation=2), (1, 4, 8), (6, 4, 3), 6),
]


@pytest.mark.parametrize(("case", "fn", "x_shape", "w_shape", "channels"), WRONG_ON_QNN,
                         ids=[c[0] for c in WRONG_ON_QNN])
def test_the_table_declines_convolutions_qnn_computes_wrongly(backend, case, fn, x_shape, w_shape, channels):
    torch.manual_seed(0)
    x, w, b = torch.randn(*x_shape), torch.randn(*w_shape), torch.randn(channels)
    module = Fn(lambda t: fn(t, w, b))
    program = partition_of(module, x)
    answer = backend.support(node_named(program, "convolution"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "wrong values" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert max_abs(outputs[0], module(x).numpy()) > 0.1, f"QNN computes {case} right now: take it again"


def test_divisor_override_is_declined_because_torch_onnx_drops_it(backend):
    import onnxruntime as ort

    from edgeport.backends.qualcomm.onnx_export import export_onnx

    x = torch.randn(1, 4, 8, 8)
    module = Fn(lambda t: F.avg_pool2d(t, 3, 2, 1, divisor_override=4))
    program = partition_of(module, x)
    answer = backend.support(node_named(program, "avg_pool2d"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "divisor_override" in answer.reason
    partition = export_onnx(program)
    session = ort.InferenceSession(partition.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (on_cpu,) = session.run(None, {partition.inputs[0]: x.numpy()})
    assert max_abs(on_cpu, module(x).numpy()) > 0.1, "torch.onnx honours divisor_override now: take it again"


# -- pools: QNN gets them wrong when they pad themselves; pool_rewrite.py pads them -------

POOLS = [  # (ONNX op, torch function, attributes as torch.onnx writes them, input shape)
    ("AveragePool", lambda t: F.avg_pool2d(t, 2, 2, 1),
     dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=0, count_include_pad=1), (1, 8, 20, 20)),
    ("AveragePool", lambda t: F.avg_pool2d(t, 3, ceil_mode=True),
     dict(kernel_shape=[3, 3], strides=[3, 3], pads=[0, 0, 0, 0], ceil_mode=1, count_include_pad=1), (1, 8, 20, 20)),
    ("AveragePool", lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False),
     dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], ceil_mode=0, count_include_pad=0), (1, 8, 20, 20)),
    ("MaxPool", lambda t: F.max_pool2d(t, 2, 2, 1),
     dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=0), (1, 8, 20, 20)),
]


def _one_node_model(op, attrs, x, out_shape):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name="pool", **attrs)], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _on_qnn(model, x):
    from edgeport.backends.qualcomm.options import provider_options
    from edgeport.backends.qualcomm.qnn_runtime import compile_context, load_context

    outcome = compile_context(model.SerializeToString(), provider_options(QualcommOptions()))
    assert not outcome.refused
    return load_context(outcome.context_model).run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize(("op", "fn", "attrs", "shape"), POOLS, ids=["avg_k2s2p1", "avg_ceil", "avg_exclude_pad",
                                                                       "max_k2s2p1"])
def test_torch_onnx_is_right_where_qnn_is_wrong_and_the_rewrite_is_right_on_qnn(backend, op, fn, attrs, shape):
    import onnxruntime as ort

    from edgeport.backends.qualcomm.pool_rewrite import rewrite_pools

    torch.manual_seed(0)
    x = torch.randn(*shape)
    want = fn(x).numpy()
    model = _one_node_model(op, attrs, x, want.shape)
    (on_cpu,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
        "x": x.numpy()})
    assert max_abs(on_cpu, want) < 1e-5
    assert max_abs(_on_qnn(model, x), want) > 0.1, "QNN pads this pool right now: the rewrite may go"
    assert rewrite_pools(model) == 1
    assert {n.op_type for n in model.graph.node} <= {"Concat", op, "Mul"}
    assert max_abs(_on_qnn(model, x), want) < 1e-2


def test_qnn_folds_an_explicit_pad_back_into_the_pool_which_is_why_the_rewrite_concatenates(backend):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(0)
    x = torch.randn(1, 8, 1, 100)
    want = F.avg_pool2d(F.pad(x, (0, 2)), (1, 3), (1, 3)).numpy()
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads", "zero"], ["padded"], mode="constant"),
         helper.make_node("AveragePool", ["padded"], ["y"], kernel_shape=[1, 3], strides=[1, 3])], "pad_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(want.shape))],
        initializer=[numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 0, 2], dtype=np.int64), "pads"),
                     numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    assert max_abs(_on_qnn(model, x), want) > 0.1, "QNN computes Pad + pool right now: the rewrite could use Pad"


# -- RMS norms: QNN cannot prepare weight * (x * rsqrt(...)); norm_rewrite.py puts the scale last --

class ScaledRmsNorm(torch.nn.Module):
    """Hugging Face's LlamaRMSNorm (and T5's, Qwen2's): the scale is the Mul's first operand."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_an_rms_norm_with_its_scale_first_is_delegated_whole_and_right(backend):
    torch.manual_seed(0)
    module, x = ScaledRmsNorm(32).eval(), torch.randn(1, 8, 32)
    program = edgeport.export(module, (x,), ["qualcomm"])
    partitions = program.report()["partitions"]
    assert [p["fallback"] for p in partitions if p["fallback"]] == []
    assert {n["backend"] for n in program.report()["nodes"]} == {"qualcomm"}
    with torch.no_grad():
        want = module(x).numpy()
    assert max_abs(program(x).numpy(), want) < 1e-2 * float(np.abs(want).max())


def test_qnn_cannot_prepare_the_scale_first_norm_and_the_rewrite_can(backend, monkeypatch):
    """For a chain native_norm.py leaves (its axes not trailing): here one it is told to leave."""
    from edgeport.backends.qualcomm import onnx_export
    from edgeport.backends.qualcomm.norm_rewrite import reorder_norm_scales
    from edgeport.backends.qualcomm.options import provider_options
    from edgeport.backends.qualcomm.qnn_runtime import QnnCompileError, compile_context

    monkeypatch.setattr(onnx_export, "fuse_rms_norms", lambda model: 0)
    partition = onnx_export.export_onnx(partition_of(ScaledRmsNorm(32).eval(), torch.randn(1, 8, 32)))
    muls = [n for n in partition.model.graph.node if n.op_type == "Mul"]
    assert [n.input[1] for n in muls[-1:]] == ["weight"], "export_onnx puts the scale last"
    muls[-1].input[0], muls[-1].input[1] = muls[-1].input[1], muls[-1].input[0]  # back to torch.onnx's order
    with pytest.raises(QnnCompileError, match="MEM_ALLOC"):  # if this prepares now, the rewrite may go
        compile_context(partition.model.SerializeToString(), provider_options(QualcommOptions()))
    assert reorder_norm_scales(partition.model) == 1
    outcome = compile_context(partition.model.SerializeToString(), provider_options(QualcommOptions()))
    assert outcome.context_model and not outcome.refused


# -- RMS norms as HTP's native RmsNorm (native_norm.py): the chain goes wrong in fp16 ------------

TWO_AXES_WEIGHT = torch.rand(4, 32, generator=torch.Generator().manual_seed(1)) + 0.5
WIDE_WEIGHT = torch.rand(576, generator=torch.Generator().manual_seed(2)) + 0.5

NORMS = {  # name: (function, input)
    # wrong as the Pow/ReduceMean/... chain: squares beyond fp16's 65504 with no weight
    # after them (relative error 2.0; 0.3 for x + 0.5 at 300), or over two axes (0.74)
    "beyond_fp16_squares": (lambda t: F.rms_norm(t, (576,)), torch.randn(1, 8, 576) * 1000),
    "shifted_by_half": (lambda t: F.rms_norm(t + 0.5, (576,)), torch.randn(1, 8, 576) * 300),
    "two_axes": (lambda t: F.rms_norm(t, (4, 32), TWO_AXES_WEIGHT), torch.randn(2, 4, 32) * 500),
    # right as the chain too (HTP fuses a chain ending in its weight): right as one node
    "weighted": (lambda t: F.rms_norm(t + 0.5, (576,), WIDE_WEIGHT), torch.randn(1, 8, 576) * 1000),
    "hugging_face_chain": (lambda t: WIDE_WEIGHT * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)),
                           torch.randn(1, 8, 576) * 1000),
}


@pytest.mark.parametrize("case", list(NORMS))
def test_an_rms_norm_is_one_native_node_and_right_where_its_squares_leave_fp16(backend, case):
    from edgeport.backends.qualcomm.onnx_export import export_onnx

    fn, x = Fn(NORMS[case][0]), NORMS[case][1]
    ops = [n.op_type for n in export_onnx(partition_of(fn, x)).model.graph.node]
    assert ops.count("SimplifiedLayerNormalization") == 1 and not {"Pow", "ReduceMean", "Sqrt"} & set(ops)
    program = edgeport.export(fn, (x,), ["qualcomm"])
    assert {n["backend"] for n in program.report()["nodes"]} == {"qualcomm"}
    want = fn(x.double()).numpy()
    assert max_abs(program(x).numpy(), want) < 2e-3 * float(np.abs(want).max())


def test_a_norm_over_leading_axes_stays_a_chain():
    from edgeport.backends.qualcomm.onnx_export import export_onnx

    fn = Fn(lambda t: t * torch.rsqrt(t.pow(2).mean(1, keepdim=True) + 1e-6))
    ops = [n.op_type for n in export_onnx(partition_of(fn, torch.randn(2, 4, 32))).model.graph.node]
    assert "SimplifiedLayerNormalization" not in ops and "ReduceMean" in ops


# -- found by the OpInfo sweep (tests/opinfo) -------------------------------------------------

@pytest.mark.parametrize("op", ["floor", "ceil", "round"])
def test_rounding_is_declined_because_fp16_inputs_make_it_off_by_one(backend, op):
    # Values within fp16's spacing of an integer: HTP rounds the input to fp16 first.
    x = torch.tensor([[-5.998, -1.9996, 2.9996, 3.0004, 2.5002, -0.5001, 1000.6, 1.0]])
    fn = Fn(getattr(torch, op))
    program = partition_of(fn, x)
    (node,) = [n for n in program.graph.nodes if n.op == "call_function"]  # round is named round_1
    answer = backend.support(node, edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "fp16" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert max_abs(outputs[0], fn(x).numpy()) > 0.5, f"HTP {op} is exact on these values now: take it again"


def test_a_squeeze_of_no_dimension_is_declined_because_torch_onnx_cannot_export_it(backend):
    from edgeport.backends.qualcomm.onnx_export import export_onnx

    fn = Fn(lambda t: torch.ops.aten.squeeze.dims(t, []) + 1)  # what logsumexp of a 0-d tensor decomposes to
    program = partition_of(fn, torch.randn(()))
    answer = backend.support(node_named(program, "squeeze"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "removes no dimension" in answer.reason
    with pytest.raises(edgeport.BackendError, match="torch.onnx could not export"):
        export_onnx(program)
    squeezing = partition_of(Fn(lambda t: torch.ops.aten.squeeze.dims(t, [0]) + 1), torch.randn(1, 3))
    assert backend.support(node_named(squeezing, "squeeze"), edgeport.SupportContext(squeezing, QualcommOptions()))


def test_an_infinite_constant_is_declined_because_htp_saturates_it(backend):
    x = torch.randn(2, 8)
    fn = Fn(lambda t: torch.where(t > 0, t, float("-inf")))  # special.entr writes its -inf so
    program = partition_of(fn, x)
    (constant,) = [n for n in program.graph.nodes if n.target is torch.ops.aten.scalar_tensor.default]
    answer = backend.support(constant, edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "saturates inf" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert np.isfinite(outputs[0]).all(), "HTP keeps inf now: take infinite constants again"
    assert backend.support(node_named(program, "gt"), edgeport.SupportContext(program, QualcommOptions()))


def test_a_weight_holding_nan_is_left_to_the_next_backend_and_the_answer_is_torchs(backend):
    """A linear whose weight holds a NaN (a corrupted model) ran on HTP, which has no NaN:
    98304 where torch gives NaN, and a softmax after it a one-hot where torch's row is
    NaN; nothing said so. Its nodes are now declined, naming the weight, and the next
    backend (here portable torch) gives torch's answer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3),
                                torch.nn.Softmax(-1)).eval()
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    x = torch.randn(2, 4)
    program = edgeport.export(model, (x,), ["qualcomm"], registry=registry_for(backend))
    placed = {n["name"]: n for n in program.report()["nodes"]}
    assert {name: n["backend"] for name, n in placed.items()} == {
        "linear": "qualcomm", "relu": "qualcomm", "linear_1": "portable", "_softmax": "portable"}
    assert all("a NaN from 2.weight" in placed[name]["reasons"]["qualcomm"] for name in ("linear_1", "_softmax"))
    assert torch.as_tensor(program(x)).isnan().all() and model(x).isnan().all()


@pytest.mark.parametrize("op", ["amax", "amin"])
def test_amax_of_a_0d_tensor_is_declined_because_torch_onnx_cannot_export_it(backend, op):
    from edgeport.backends.qualcomm.onnx_export import export_onnx

    fn = Fn(lambda t: getattr(torch.ops.aten, op).default(t))  # masked.amax of a 0-d tensor
    program = partition_of(fn, torch.randn(()))
    answer = backend.support(node_named(program, op), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "0-d tensor" in answer.reason
    with pytest.raises(edgeport.BackendError, match="torch.onnx could not export"):
        export_onnx(program)


def test_a_zero_size_tensor_is_declined_because_the_simulator_dies_on_it(backend):
    # Found by the OpInfo sweep (linalg.pinv of a (3, 0) matrix): the process died of SIGFPE.
    fn = Fn(lambda a, b: a @ b.t())
    program = partition_of(fn, torch.randn(3, 0), torch.randn(3, 0))
    answer = backend.support(node_named(program, "mm"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "zero-size tensor" in answer.reason


def test_sorted_indices_are_declined_because_fp16_ties_reorder_them(backend):
    # Found by the OpInfo sweep (sort, argsort): integers up to 8000 tie in fp16.
    x = torch.randperm(8000, generator=torch.Generator().manual_seed(0)).float().reshape(2, 4000)
    fn = Fn(lambda t: t.sort(-1)[1])
    program = partition_of(fn, x)
    answer = backend.support(node_named(program, "sort"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "tie" in answer.reason
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert not np.array_equal(outputs[-1], fn(x).numpy()), "HTP sorts these indices right now: take them again"


# Found by the OpInfo sweep (trilinear interpolate): the process died of SIGSEGV compiling a
# rank-5 Mul by a (3,) weight. Whatever could die runs in a child process, so pytest lives.
IN_CHILD = """
import torch, torch.nn.functional as F, edgeport
from edgeport.backends.qualcomm import QualcommBackend, QualcommOptions
from qualcomm_helpers import Fn, max_abs, partition_of
"""


def _in_child(script: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a child; its temporary files go under ``tmp``, which the test owns:
    a child that dies leaves its temporary directories behind (CI machines are reused)."""
    return subprocess.run([sys.executable, "-W", "ignore", "-c", IN_CHILD + script], capture_output=True, text=True,
                          timeout=300, cwd=__file__.rsplit("/", 1)[0], env={**os.environ, "TMPDIR": str(tmp)})


def test_a_last_dim_weight_times_square_rank5_values_is_declined_because_htp_segfaults(backend, tmp_path):
    values, weight = torch.randn(2, 3, 3, 3, 3), torch.tensor([0.0, 0.5, 0.0])
    program = partition_of(Fn(lambda t: t * weight), values)
    answer = backend.support(node_named(program, "mul"), edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "segfault" in answer.reason
    for taken in (weight.view(1, 1, 1, 1, 3), weight.view(3, 1)):  # these compile: the decline stays narrow
        other = partition_of(Fn(lambda t: t * taken), values)
        assert backend.support(node_named(other, "mul"), edgeport.SupportContext(other, QualcommOptions()))
    died = _in_child("""
weight = torch.tensor([0.0, 0.5, 0.0])
QualcommBackend().compile(partition_of(Fn(lambda t: t * weight), torch.randn(2, 3, 3, 3, 3)), QualcommOptions())
""", tmp_path)
    assert died.returncode == -11, f"QNN compiles this Mul now (exit {died.returncode}): take it again"


def test_trilinear_interpolation_is_delegated_to_qualcomm_and_right(tmp_path):
    done = _in_child("""
x = torch.randn(2, 3, 4, 4, 4)
fn = Fn(lambda t: F.interpolate(t, size=(3, 3, 3), mode="trilinear", align_corners=True))
program = edgeport.export(fn, (x,), ["qualcomm"])
print([info.backend for info in program.manifest.artifacts.values()], max_abs(program(x), fn(x)))
""", tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    backends, error = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert "qualcomm" in backends and float(error) < 1e-2
@pytest.mark.parametrize("exponent", [1, 2, 3, 4, 7])
def test_an_integer_power_of_signed_zeros_is_exact(backend, exponent):
    x = torch.tensor([[-0.0, 0.0, -2.0, 3.0, -1.5, 0.5, -0.0, 1.25]])
    fn = Fn(lambda t: t ** exponent)
    program = edgeport.export(fn, (x,), ["qualcomm"])
    assert {n["backend"] for n in program.report()["nodes"]} == {"qualcomm"}
    got, want = program(x).numpy(), fn(x).numpy()
    assert max_abs(got, want) < 1e-3 * float(np.abs(want).max())


def test_htp_pow_is_wrong_at_negative_zero():
    from onnx import TensorProto, helper, numpy_helper

    x = torch.tensor([[-0.0, 0.0, -2.0, 3.0]])
    graph = helper.make_graph(
        [helper.make_node("Pow", ["x", "two"], ["y"])], "pow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    pytest.importorskip("onnxruntime_qnn")
    assert _on_qnn(model, x)[0, 0] < -1, "HTP's Pow(-0.0, 2) is right now: pow_rewrite.py may go"


@pytest.mark.parametrize("exponent", [0, -1, -2])
def test_a_power_zero_or_negative_is_declined(backend, exponent):
    program = partition_of(Fn(lambda t: t ** exponent), F32)
    (node,) = [n for n in program.graph.nodes if n.op == "call_function"]
    answer = backend.support(node, edgeport.SupportContext(program, QualcommOptions()))
    assert not answer and "wrong at zero" in answer.reason


def test_the_square_an_rms_norm_averages_stays_a_pow():
    """HTP gets SmolLM2's norms wrong once their Pow is multiplied out (pow_rewrite.py)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeport.backends.qualcomm.pow_rewrite import rewrite_integer_powers

    graph = helper.make_graph(
        [helper.make_node("Pow", ["x", "two"], ["squared"]), helper.make_node("Pow", ["x", "two"], ["alone"]),
         helper.make_node("ReduceMean", ["squared"], ["mean"])], "norm_and_power",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("alone", TensorProto.FLOAT, [1, 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")])
    model = helper.make_model(graph)
    assert rewrite_integer_powers(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Pow", "Mul", "ReduceMean"]


PAST_FP16 = torch.tensor([[float("inf"), float("-inf"), 7e4, -7e4, 3.0, -0.5, 0.0, 65504.0]])


@pytest.mark.parametrize("fn", [torch.sign, lambda t: torch.sign(t * 2.0)], ids=["input", "overflowed_product"])
def test_the_sign_of_a_value_past_fp16s_range_is_torchs(backend, fn):
    """HTP gave 0 for sign(±inf), sign(±70000) and sign(65504 * 2); sign_rewrite.py clips first."""
    program = edgeport.export(Fn(fn), (PAST_FP16,), ["qualcomm"])
    assert {n["backend"] for n in program.report()["nodes"]} == {"qualcomm"}
    np.testing.assert_allclose(program(PAST_FP16).numpy(), fn(PAST_FP16).numpy(), rtol=0, atol=1e-6)


def test_htp_sign_is_zero_past_fp16s_range():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sign", ["x"], ["y"])], "sign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(PAST_FP16.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(PAST_FP16.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    pytest.importorskip("onnxruntime_qnn")
    got = _on_qnn(model, PAST_FP16)[0]
    assert (got[:4] == 0).all(), f"HTP's Sign past fp16 is {got[:4]} now: sign_rewrite.py may go"

def test_a_query_whose_every_key_is_masked_gets_zeros_as_in_torch(backend, monkeypatch):
    """torch.onnx writes a bool mask as a finite fill, so its NaN guard never fires: a
    query masked whole read the mean of the values. The export adds the select of zeros
    (attention.masked_rows_guarded); the attention is the program's output here, and
    the guarded value stands in its name."""
    from edgeport.backends.qualcomm import onnx_export

    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind()
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    fn = Fn(lambda *t: F.scaled_dot_product_attention(*t[:3], attn_mask=t[3]))
    inputs = (q, k, v, mask)
    program = edgeport.export(fn, inputs, ["qualcomm"], registry=registry_for(backend))
    assert [n["backend"] for n in program.report()["nodes"]] == ["qualcomm"]
    assert max_abs(program(*inputs), fn(*inputs)) < 1e-2
    assert np.abs(np.asarray(program(*inputs))[0, :, 1]).max() == 0
    monkeypatch.setattr(onnx_export, "masked_rows_guarded", lambda _: contextlib.nullcontext())
    unguarded = edgeport.export(fn, inputs, ["qualcomm"], registry=registry_for(backend))
    assert np.abs(np.asarray(unguarded(*inputs))[0, :, 1]).max() > 0.01, \
        "torch.onnx zeroes a row masked whole now: drop the guard"
