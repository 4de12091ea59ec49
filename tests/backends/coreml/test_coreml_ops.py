"""Small op cases, each converted to a Core ML ML program and checked as far as Linux can.

Per case: coremltools' registry (through `support`) takes every node; the artifact
unzips, its spec loads, its inputs and outputs match the partition's (names, shapes,
carrier dtypes), its MIL program holds the ops the case is about, and coremltools'
MIL reader re-loads and validates it. Running the models needs macOS:
test_coreml_run_macos.py.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

import edgeport  # noqa: E402
from coreml_helpers import Converted, Lambda, export, user_io  # noqa: E402
from edgeport.backends.coreml import CoreMLOptions  # noqa: E402
from edgeport.backends.coreml.convert import CARRIER  # noqa: E402

x4 = torch.randn(1, 8, 8, 8)  # (B, C, H, W)
x3 = torch.randn(2, 6, 16)  # (B, T, C)
qkv = torch.randn(1, 2, 6, 8)  # (B, nh, T, hs)
ids = torch.randint(0, 10, (2, 5))

# id -> (module, inputs, MIL ops the converted program must hold)
CASES = {
    "conv2d": (nn.Conv2d(8, 4, 3, padding=1), (x4,), {"conv"}),
    "depthwise_conv": (nn.Conv2d(8, 8, 3, groups=8), (x4,), {"conv"}),
    "conv_transpose": (nn.ConvTranspose2d(8, 4, 2, stride=2), (x4,), {"conv_transpose"}),
    "conv1d": (nn.Conv1d(6, 4, 3), (x3,), {"conv"}),
    "linear": (nn.Linear(16, 5), (x3,), {"linear"}),
    "relu": (nn.ReLU(), (x4,), {"relu"}),
    "gelu": (nn.GELU(), (x3,), {"gelu"}),
    "hardswish": (nn.Hardswish(), (x4,), {"sigmoid_hard"}),
    "silu": (nn.SiLU(), (x4,), {"silu"}),
    "sigmoid_tanh": (Lambda(lambda x: torch.sigmoid(x) * torch.tanh(x)), (x4,), {"sigmoid", "tanh"}),
    "softmax": (nn.Softmax(dim=-1), (x3,), {"softmax"}),
    "log_softmax": (nn.LogSoftmax(dim=-1), (x3,), {"softmax", "log"}),
    "layer_norm": (nn.LayerNorm(16), (x3,), {"layer_norm"}),
    "batch_norm": (nn.BatchNorm2d(8), (x4,), {"batch_norm"}),
    "instance_norm": (nn.InstanceNorm2d(8, affine=True), (x4,), {"instance_norm"}),
    "attention": (Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), (qkv, qkv, qkv), {"matmul", "softmax"}),
    "causal_attention": (Lambda(lambda q: F.scaled_dot_product_attention(q, q, q, is_causal=True)), (qkv,), {"softmax"}),
    "matmul": (Lambda(torch.matmul), (torch.randn(2, 3, 4, 5), torch.randn(5, 6)), {"matmul"}),
    "max_pool": (nn.MaxPool2d(2), (x4,), {"max_pool"}),
    "avg_pool": (nn.AvgPool2d(3, stride=1, padding=1), (x4,), {"avg_pool"}),
    "global_avg_pool": (nn.AdaptiveAvgPool2d(1), (x4,), {"reduce_mean"}),
    "upsample_nearest": (nn.Upsample(scale_factor=2), (x4,), {"upsample_nearest_neighbor"}),
    "upsample_bilinear": (nn.Upsample(scale_factor=2, mode="bilinear"), (x4,), {"upsample_bilinear"}),
    "pixel_shuffle": (nn.PixelShuffle(2), (x4,), {"pixel_shuffle"}),
    "reflection_pad": (nn.ReflectionPad2d(1), (x4,), {"pad"}),
    "cat": (Lambda(lambda a, b: torch.cat([a, b], dim=1)), (x4, x4), {"concat"}),
    "split": (Lambda(lambda x: x.split([3, 5], dim=1)), (x4,), {"split"}),
    "reshape": (Lambda(lambda x: x.reshape(8, 64) * 2), (x4,), {"reshape"}),
    "permute": (Lambda(lambda x: x.permute(0, 2, 3, 1) + 1), (x4,), {"transpose"}),
    "slice": (Lambda(lambda x: x[:, 2:6, ::2] * 2), (x4,), {"slice_by_index"}),
    "reduce": (Lambda(lambda x: x.sum(-1) + x.amax(-1)), (x3,), {"reduce_sum", "reduce_max"}),
    "where": (Lambda(lambda x: torch.where(x > 0, x, 0.1 * x)), (x4,), {"greater", "select"}),
    "topk": (Lambda(lambda x: x.topk(3, dim=-1)), (x3,), {"topk"}),
    "cumsum": (Lambda(lambda x: x.cumsum(1)), (x3,), {"cumsum"}),
    "embedding": (nn.Embedding(10, 4), (ids,), {"gather"}),
    "int_arithmetic": (Lambda(lambda i: i * 3 + 1), (ids,), {"mul", "add"}),
    "bool_output": (Lambda(lambda x: x > 0.5), (x4,), {"greater"}),
    "bool_input": (Lambda(lambda x, m: x.masked_fill(m, 0.0)), (x4, x4 > 0), {"select"}),
}


# The cases the issue names run always; the rest of the sweep is marked slow.
CORE = {"conv2d", "linear", "relu", "softmax", "layer_norm", "attention", "max_pool", "avg_pool", "cat", "reshape",
        "embedding", "bool_output"}
PARAMS = [pytest.param(name, marks=() if name in CORE else pytest.mark.slow) for name in sorted(CASES)]


@pytest.fixture(scope="module", params=PARAMS)
def case(request, backend):
    module, inputs, expected = CASES[request.param]
    program = export(module, inputs)
    return request.param, program, Converted.of(backend, program), expected


def test_coremltools_takes_every_node(case, backend):
    _, program, _, _ = case
    ctx = edgeport.SupportContext(program, CoreMLOptions())
    declined = {n.name: backend.support(n, ctx).reason for n in program.graph.nodes if not backend.support(n, ctx)}
    assert declined == {}


def test_spec_interface_matches_the_partition(case):
    _, program, converted, _ = case
    inputs, outputs = user_io(program)
    spec_inputs = [(f.name, f.shape, f.dtype) for f in converted.description.inputs]
    spec_outputs = [(f.name, f.shape, f.dtype) for f in converted.description.outputs]
    assert spec_inputs == [(name, shape, CARRIER[dtype]) for name, shape, dtype in inputs]
    assert spec_outputs == [(name, shape, CARRIER[dtype]) for name, shape, dtype in outputs]


def test_metadata_maps_partition_values_to_features(case):
    _, program, converted, _ = case
    inputs, outputs = user_io(program)
    meta = converted.artifact.metadata
    assert [(i["name"], tuple(i["shape"]), i["dtype"]) for i in meta["inputs"]] == [
        (n, s, str(d).removeprefix("torch.")) for n, s, d in inputs
    ]
    assert [o["coreml_name"] for o in meta["outputs"]] == [f.name for f in converted.description.outputs]
    assert meta["mil_ops"] == converted.description.mil_ops


def test_mil_program_holds_the_expected_ops(case):
    _, _, converted, expected = case
    assert expected <= set(converted.description.mil_ops), converted.description.mil_ops


def test_reloaded_mil_program_has_the_same_ops(case):
    _, _, converted, expected = case
    reloaded = {op.op_type for op in converted.mil.functions["main"].operations}
    assert expected <= reloaded


def test_fp32_precision_keeps_the_program_in_fp32(backend):
    program = export(nn.Conv2d(8, 4, 3), (x4,))
    converted = Converted.of(backend, program, CoreMLOptions(compute_precision="fp32"))
    fp16_casts = [op for op in converted.mil.functions["main"].operations if op.op_type == "cast"]
    assert fp16_casts == []
    assert "conv" in converted.description.mil_ops


def test_ios18_target_fuses_attention(backend):
    program = export(Lambda(lambda q: F.scaled_dot_product_attention(q, q, q)), (qkv,))
    converted = Converted.of(backend, program, CoreMLOptions(minimum_deployment_target="iOS18"))
    assert "scaled_dot_product_attention" in converted.description.mil_ops
    assert converted.description.specification_version == 9  # Core ML 8, iOS18
