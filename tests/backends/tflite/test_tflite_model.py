"""What the writer puts in the flatbuffer: layouts, folds, fusions, dtypes at the boundary,
fp16 weights, op versions; and how the runner behaves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ai_edge_litert import schema_py_generated as schema
from torch import nn

from edgeport import DeclineNodes, InputError, SupportContext
from edgeport.backends.tflite import TfliteExecutable, write_tflite, writer_support
from edgeport.backends.tflite.runner import undelegated_ops
from tflite_cases import bn_with_stats
from tflite_helpers import Lambda, capture, lower

OPS = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def parse(data: bytes):
    model = schema.Model.GetRootAs(data, 0)
    return model, model.Subgraphs(0)


def operators(data: bytes) -> list[tuple[str, object]]:
    """(op name, Operator table) in execution order."""
    model, graph = parse(data)
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        out.append((OPS[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()], op))
    return out


class SmallCnn(nn.Module):
    """conv-bn-relu6, depthwise, residual add, spatial mean, linear: the MobileNet pattern."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn_with_stats(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), bn_with_stats(8), nn.ReLU6())
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.dw(y)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_cnn_keeps_nhwc_folds_batch_norm_and_fuses_activations():
    torch.manual_seed(0)
    model, error = lower(SmallCnn().eval(), torch.randn(1, 3, 16, 16))
    assert error < 1e-4
    ops = [name for name, _ in operators(model.data)]
    assert ops.count("TRANSPOSE") == 1 and model.transposed_inputs == ["x"]
    assert "MUL" not in ops and "RELU6" not in ops  # batch norms folded, activations fused
    conv = next(op for name, op in operators(model.data) if name == "CONV_2D")
    options = schema.Conv2DOptions()
    options.Init(conv.BuiltinOptions().Bytes, conv.BuiltinOptions().Pos)
    assert options.FusedActivationFunction() == schema.ActivationFunctionType.RELU6


def test_flatten_of_spatial_nhwc_needs_one_more_transpose():
    torch.manual_seed(0)
    module = Lambda(lambda m, x: F.linear(F.conv2d(x, m.w).flatten(1), m.fc), w=torch.randn(4, 3, 3, 3),
                    fc=torch.randn(2, 4 * 6 * 6))
    model, error = lower(module, torch.randn(1, 3, 8, 8))
    assert error < 1e-4 and model.transposes == 2


def test_permutes_and_head_repeats_move_no_data():
    """view -> permute -> unsqueeze -> expand -> view (GQA's repeat_interleave) stays in place."""
    module = Lambda(lambda m, x: x.view(1, 6, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1) * 2)
    model, error = lower(module, torch.randn(1, 6, 16))
    assert error == 0.0 and model.transposes == 1  # only to return torch's (B, h, T, hs) order
    assert model.transposed_outputs == [model.outputs[0]] and model.transposed_inputs == []


def test_two_views_of_one_tensor_are_each_laid_out_in_their_own_order():
    """k.transpose(0, 1) is returned and also read as its own transpose by a matmul: each
    view gets its own layout change, not the other's (a KV-cache row write needs this)."""
    module = Lambda(lambda m, q, k: (k.transpose(0, 1), torch.bmm(q, k.transpose(0, 1).transpose(1, 2))))
    model, error = lower(module, torch.randn(3, 4, 8), torch.randn(5, 3, 8))
    assert error < 1e-5


def test_int64_and_bool_keep_their_dtypes_at_the_boundary():
    module = Lambda(lambda m, ids: (F.embedding(ids, m.table), ids * 2, ids > 3), table=torch.randn(10, 4))
    ids = torch.tensor([[1, 4, 9]])
    model, error = lower(module, ids)
    assert error == 0.0
    interpreter = TfliteExecutable(model.data).interpreter
    assert [d["dtype"] for d in interpreter.get_input_details()] == [np.int64]
    assert [d["dtype"] for d in interpreter.get_output_details()] == [np.float32, np.int64, np.bool_]
    assert "GATHER" in model.ops and model.ops["CAST"] == 2  # int32 inside, int64 at the boundary


def test_fp16_stores_half_weights_and_hints_fp16_inference():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 1)).eval()
    x = torch.randn(1, 8, 16, 16)
    full, full_error = lower(module, x)
    half, half_error = lower(module, x, fp16=True)
    assert full_error < 1e-5 and half_error < 1e-2
    assert len(half.data) < 0.6 * len(full.data)
    assert half.ops["DEQUANTIZE"] == 2  # the two filters; small biases stay fp32
    model, _ = parse(half.data)
    metadata = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
    assert "reduced_precision_support" in metadata


def test_broadcast_to_is_written_at_a_version_the_runtime_registers():
    model, error = lower(Lambda(lambda m, x: x.expand(3, 4, 20) + 1), torch.randn(1, 4, 1))
    assert error == 0.0 and model.ops["BROADCAST_TO"] == 1
    parsed, _ = parse(model.data)
    versions = {OPS[parsed.OperatorCodes(i).BuiltinCode()]: parsed.OperatorCodes(i).Version()
                for i in range(parsed.OperatorCodesLength())}
    assert versions["BROADCAST_TO"] == 2


def test_weights_are_aligned_constant_buffers():
    torch.manual_seed(0)
    model, _ = lower(nn.Linear(64, 32).eval(), torch.randn(2, 64))
    parsed, graph = parse(model.data)
    weights = next(graph.Tensors(i) for i in range(graph.TensorsLength()) if graph.Tensors(i).Name().endswith(b"weight"))
    data = parsed.Buffers(weights.Buffer()).DataAsNumpy()  # a view into model.data
    start = data.ctypes.data - np.frombuffer(model.data, np.uint8).ctypes.data
    assert data.size == 64 * 32 * 4 and start % 16 == 0


def test_a_tied_embedding_and_output_projection_store_their_table_once():
    """Embedding and lm_head sharing one parameter (GATHER and FULLY_CONNECTED) share one buffer."""
    torch.manual_seed(0)
    module = Lambda(lambda m, ids: F.linear(F.embedding(ids, m.table), m.table), table=torch.randn(300, 16))
    model, error = lower(module, torch.tensor([[3, 7, 299]]))
    assert error < 1e-5
    parsed, graph = parse(model.data)
    sizes = [parsed.Buffers(i).DataLength() for i in range(parsed.BuffersLength())]
    assert sizes.count(300 * 16 * 4) == 1 and len(model.data) < 2 * 300 * 16 * 4


def test_a_constant_output_is_declined_not_written():
    module = Lambda(lambda m, x: (x + 1, m.c * 2), c=torch.ones(3))
    with pytest.raises(DeclineNodes) as declined:
        write_tflite(capture(module, (torch.randn(3),)))
    assert list(declined.value.reasons.values()) == ["its value is a constant: nothing to compute in the TFLite model"]


def test_a_dynamic_dim_is_written_as_minus_one_in_the_shape_signature():
    program = torch.export.export(nn.ReLU(), (torch.randn(4, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},)).run_decompositions()
    relu = next(n for n in program.graph.nodes if n.op == "call_function")
    assert writer_support(relu, SupportContext(program, None))
    runner = TfliteExecutable(write_tflite(program).data, threads=1)
    (detail,) = runner.interpreter.get_input_details()
    assert list(detail["shape_signature"]) == [-1, 8]
    for batch in (1, 4, 9):
        x = torch.randn(batch, 8)
        (y,) = runner.run([x])
        assert torch.equal(torch.from_numpy(y), torch.relu(x))


def _attention_like(m, x, state):
    """Scores over a static state and a chunk of dynamic length side by side, then each
    part sliced back out: the second slice runs to the end of the dynamic dim."""
    scores = torch.cat([x @ state.t(), x @ x.t()], dim=-1).softmax(-1)  # (T, S + T)
    return scores[:, : state.shape[0]] @ state + scores[:, state.shape[0] :] @ x


def _dynamic_chunk_model() -> TfliteExecutable:
    chunk = torch.export.Dim("chunk", min=1, max=8)
    program = torch.export.export(Lambda(_attention_like), (torch.randn(8, 4), torch.randn(6, 4)),
                                  dynamic_shapes=(({0: chunk}, None),)).run_decompositions()  # (*args)
    return TfliteExecutable(write_tflite(program).data, threads=1)


def test_a_slice_to_the_end_of_a_dynamic_dim_is_written_and_runs_in_xnnpack():
    """Written at two sizes, the slice's size differs: it becomes a STRIDED_SLICE ending at
    the end (end_mask), which XNNPACK runs (a SLICE of size -1 it leaves to TFLite)."""
    runner = _dynamic_chunk_model()
    assert undelegated_ops(runner.interpreter) == []
    state = torch.randn(6, 4)
    for length in (8, 1, 5):
        x = torch.randn(length, 4)
        (y,) = runner.run([x, state])
        assert np.allclose(y, _attention_like(None, x, state).numpy(), rtol=1e-5, atol=1e-5)


def test_an_input_in_place_keeps_its_buffer_when_another_input_is_resized():
    """The static input, though second, is the model's first tensor, so LiteRT's
    re-planned arena leaves it where `input_buffer` found it (a KV cache read in place by
    prefill and decode)."""
    runner = _dynamic_chunk_model()
    state = runner.input_buffer(1)
    state[:] = np.random.default_rng(0).standard_normal(state.shape, dtype=np.float32)
    for length in (1, 8, 3, 1):
        x = torch.randn(length, 4)
        (y,) = runner.run([x, state])
        assert np.allclose(y, _attention_like(None, x, torch.from_numpy(state.copy())).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="lives in place"):
        runner.run([torch.randn(2, 4), np.zeros((5, 4), dtype=np.float32)])


def test_runner_reuses_its_interpreter_and_checks_the_input_count():
    program = capture(Lambda(lambda m, a, b: a @ b), (torch.randn(3, 4), torch.randn(4, 2)))
    runner = TfliteExecutable(write_tflite(program).data, threads=1)
    a, b = torch.randn(4, 3).t(), torch.randn(4, 2)  # `a` is not contiguous
    first = runner.run([a, b])[0]
    assert np.array_equal(first, runner.run([a, b])[0])
    assert np.allclose(first, (a @ b).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="takes 2 inputs, got 1"):
        runner.run([a])
