"""Compile for QNN HTP and run in QNN's HTP simulator; outputs match eager within fp16 tolerance.

Tolerance (fp16 HTP vs fp32 eager): cosine >= 0.999 over the outputs, and max |error| <=
2% of the largest reference value. Shapes stay small: the simulator is real QNN code.
"""

import logging

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeport.backends.qualcomm import QualcommOptions

from qualcomm_helpers import MIN_COSINE, Fn, cosine, max_abs, partition_of


def compile_and_run(backend, module, inputs, **options):
    program = partition_of(module, *inputs)
    artifact = backend.compile(program, QualcommOptions(**options))
    outputs = backend.load(artifact).run(list(inputs))
    with torch.no_grad():
        expected = module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return artifact, outputs, [e.numpy() for e in expected]


def assert_close(outputs, expected):
    assert len(outputs) == len(expected)
    for out, ref in zip(outputs, expected):
        assert out.shape == ref.shape
        assert cosine(out, ref) >= MIN_COSINE
        assert max_abs(out, ref) <= 0.02 * float(np.abs(ref).max())


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(16, 32, 1), nn.Hardswish(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj, self.norm = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.LayerNorm(dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return x + self.proj(y.transpose(1, 2).reshape(b, t, c))


def test_a_small_cnn_runs_on_htp_and_matches_eager(backend):
    torch.manual_seed(0)
    artifact, outputs, expected = compile_and_run(backend, SmallCnn(), (torch.randn(1, 3, 32, 32),))
    assert_close(outputs, expected)
    assert artifact.suffix == ".onnx"
    assert artifact.metadata["soc"] == "SM8650" and artifact.metadata["htp_arch"] == 75
    assert "QNN 2." in artifact.metadata["toolchain"]


def test_the_artifact_is_one_epcontext_node_holding_a_qnn_context_binary(backend):
    artifact, _, _ = compile_and_run(backend, nn.Sequential(nn.Linear(8, 8), nn.ReLU()), (torch.randn(2, 8),))
    graph = onnx.load_from_string(artifact.data).graph
    assert [n.op_type for n in graph.node] == ["EPContext"]  # nothing left for ONNX Runtime's CPU EP
    embed = next(a.i for a in graph.node[0].attribute if a.name == "embed_mode")
    assert embed == 1


def test_a_linear_stack_with_gelu_matches_eager(backend):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16), nn.Tanh())
    _, outputs, expected = compile_and_run(backend, mlp, (torch.randn(4, 32),), soc="SM8550")
    assert_close(outputs, expected)


def test_causal_attention_matches_eager(backend):
    torch.manual_seed(0)
    _, outputs, expected = compile_and_run(backend, Attention(), (torch.randn(1, 8, 32),), soc="SM8750")
    assert_close(outputs, expected)


class Reorder(nn.Module):
    def forward(self, a, unused, b):
        return b.sum(-1, keepdim=True) * 2, a - 1, (a * b[:, :1]).relu()


def test_inputs_and_outputs_keep_the_partitions_order(backend):
    # Outputs come back in another order than the inputs, with other shapes, and one
    # input is unused: run() still takes it, in its place.
    inputs = (torch.randn(3, 4), torch.randn(5), torch.randn(3, 6))
    artifact, outputs, expected = compile_and_run(backend, Reorder(), inputs)
    assert artifact.metadata["inputs"] == ["a", "unused", "b"]
    for out, ref in zip(outputs, expected):
        assert out.shape == ref.shape
        assert max_abs(out, ref) <= 0.01 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("key, names", [("inputs", ["b", "unused", "a"]), ("inputs", ["a", "unused", "x"]),
                                         ("outputs", ["sub", "mul", "relu"])], ids=["swapped", "renamed", "outputs"])
def test_names_edited_in_the_manifest_are_a_program_error_at_load(backend, key, names):
    """run() feeds inputs by the recorded names: a renamed one failed at the first call, and
    two swapped fed each input to the other, a different answer."""
    import dataclasses

    import edgeport

    artifact = backend.compile(partition_of(Reorder(), torch.randn(3, 4), torch.randn(5), torch.randn(3, 4)),
                               QualcommOptions())
    edited = dataclasses.replace(artifact, metadata={**artifact.metadata, key: names})
    with pytest.raises(edgeport.ProgramError, match=f"metadata records {key} .* its model has"):
        backend.load(edited)


def test_integer_and_bool_tensors_pass_through(backend):
    fn = Fn(lambda ids, x: (torch.nn.functional.embedding(ids, x), ids * 2 + 1, x > 0))
    inputs = (torch.tensor([[1, 0, 3]]), torch.randn(4, 8))
    _, outputs, expected = compile_and_run(backend, fn, inputs)
    assert max_abs(outputs[0], expected[0]) <= 5e-3
    assert (outputs[1] == expected[1]).all() and (outputs[2] == expected[2]).all()


def kept_whole(module, *inputs):
    """The edge program with the qualcomm backend's keep_ops left undecomposed."""
    from edgeport.backends.qualcomm import QualcommBackend

    table = torch.export.default_decompositions()
    for op in QualcommBackend().keep_ops():
        table.pop(op, None)
    return torch.export.export(module.eval(), inputs).run_decompositions(table)


@pytest.mark.parametrize(
    ("fn", "shape"),
    [
        (lambda x: F.pad(x, (1, 2, 1, 0), mode="reflect"), (1, 4, 8, 8)),
        (lambda x: F.pixel_shuffle(F.hardswish(x * 4), 2), (1, 8, 4, 4)),
        (lambda x: F.scaled_dot_product_attention(x, x, x, is_causal=True), (1, 2, 8, 16)),
    ],
    ids=["pad_reflect", "hardswish_pixel_shuffle", "sdpa"],
)
def test_ops_kept_whole_at_capture_run_on_qnn(backend, fn, shape):
    x = torch.randn(*shape)
    program = kept_whole(Fn(fn), x)
    kept = {n.target for n in program.graph.nodes if n.op == "call_function"} & backend.keep_ops()
    assert kept  # the test really exercises an undecomposed op
    outputs = backend.load(backend.compile(program, QualcommOptions())).run([x])
    assert_close(outputs, [fn(x).numpy()])


def test_a_failed_run_says_qnns_reason_and_prints_nothing_on_stdout(backend, capfd):
    """A token id past the table: the simulator printed its reason on stdout, and ONNX
    Runtime retried on its CPU EP, failing with "Conflicting session configuration"."""
    import edgeport

    model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 4)).eval()
    ids = torch.zeros(1, 4, dtype=torch.int64)
    executable = backend.load(backend.compile(partition_of(model, ids), QualcommOptions()))
    capfd.readouterr()
    with pytest.raises(edgeport.ExecutionError, match="Gather index: 100 is larger than input dim") as info:
        executable.run([torch.full((1, 4), 100)])
    assert "token id" in info.value.hint
    printed = capfd.readouterr()
    assert printed.out == "" and "Falling back" not in printed.err and "Non-zero status" not in printed.err


def test_a_nan_input_is_warned_of_once_per_step(backend, caplog):
    """HTP has no NaN: it computed relu(NaN) as 65536, silently (docs/coverage.md)."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    x = torch.randn(2, 8)
    executable = backend.load(backend.compile(partition_of(model, x), QualcommOptions()))
    def said() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "edgeport.qualcomm"]

    with caplog.at_level("WARNING", logger="edgeport.qualcomm"):
        executable.run([x])
        executable.run([torch.full((2, 8), float("inf"))])  # saturates to ±131008, as a -inf mask needs
        assert said() == []
        x[1, 3] = float("nan")
        executable.run([x])
        executable.run([x])
    [record] = said()
    assert "holds NaN, which HTP does not have: it computes with 131008 in its place" in record.getMessage()
