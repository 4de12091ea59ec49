"""support(): answered from coremltools' own torch op registry, with its reasons."""

import operator
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

import edgeport  # noqa: E402
from coreml_helpers import Lambda, export  # noqa: E402
from edgeport.backends.coreml import CoreMLOptions  # noqa: E402
from edgeport.backends.coreml.support import ConverterRegistry  # noqa: E402

aten = torch.ops.aten
x = torch.randn(2, 3, 4)


def answers(backend, program) -> dict[str, edgeport.Support]:
    ctx = edgeport.SupportContext(program, CoreMLOptions())
    return {n.name: backend.support(n, ctx) for n in program.graph.nodes}


@pytest.fixture(scope="module")
def registry() -> ConverterRegistry:
    return ConverterRegistry()


@pytest.mark.parametrize(
    "target, key",
    [
        (aten.convolution.default, "convolution"),
        (aten.add.Tensor, "add"),
        (aten.mean.dim, "mean.dim"),
        (aten._native_batch_norm_legit_no_training.default, "_native_batch_norm_legit_no_training"),
        (operator.getitem, "getitem"),
    ],
)
def test_registry_key_is_coremltools_normalised_name(registry, target, key):
    assert registry.key(target) == key


def test_lookup_agrees_with_coremltools_own_node_check(registry):
    """coremltools exposes is_torch_fx_node_supported; our lookup must answer the same."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import is_torch_fx_node_supported

    program = export(
        Lambda(lambda a: (torch.relu(a).sum(-1).prod(-1), a.max(-1), torch.fmod(a, 0.5), torch.var_mean(a, -1))), (x,)
    )
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it uses the registry's deprecated __contains__
        theirs = {n.name: is_torch_fx_node_supported(n) for n in nodes}
    ours = {n.name: registry.has_converter(n.target) for n in nodes}
    assert ours == theirs
    assert not all(ours.values()) and any(ours.values())  # the case has both kinds


@pytest.mark.parametrize(
    "fn, node, key",
    [
        (lambda a: a.prod(-1), "prod", "prod.dim_int"),
        (lambda a: torch.fmod(a, 0.5), "fmod", "fmod"),
        (lambda a: (a > 0) | (a < -1), "bitwise_or", "bitwise_or"),
    ],
)
def test_op_without_converter_is_declined_with_coremltools_key(backend, fn, node, key):
    answer = answers(backend, export(Lambda(fn), (x,)))[node]
    assert not answer
    target = {"prod": "aten.prod.dim_int", "fmod": "aten.fmod.Scalar", "bitwise_or": "aten.bitwise_or.Tensor"}[node]
    assert answer.reason == f"coremltools has no converter for {target} (looked up as '{key}')"


def test_every_node_of_a_small_cnn_is_supported(backend):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    program = export(model, (torch.randn(1, 3, 8, 8),))
    assert all(answers(backend, program).values())
    assert any(n.target is operator.getitem for n in program.graph.nodes)  # batch norm's getitem


def test_alias_is_supported_through_its_copy_twin(backend, registry):
    program = export(Lambda(lambda a: torch.ops.aten.alias.default(a) + 1), (x,))
    assert [n.target for n in program.graph.nodes if n.op == "call_function"][0] is aten.alias.default
    assert registry.copy_twin(aten.alias.default) is aten.alias_copy.default
    assert registry.copy_twin(aten.view.default) is None  # has its own converter
    assert all(answers(backend, program).values())


def test_float64_is_declined(backend):
    answer = answers(backend, export(Lambda(lambda a: a * 2), (x.double(),)))["mul"]
    assert not answer and "torch.float64" in answer.reason


def test_symbolic_shape_is_declined(backend):
    batch = torch.export.Dim("batch", min=2, max=8)
    program = torch.export.export(nn.ReLU(), (x,), dynamic_shapes=({0: batch},)).run_decompositions()
    answer = answers(backend, program)["relu"]
    assert not answer and "symbolic shape" in answer.reason


def test_inputs_parameters_and_outputs_are_supported(backend):
    program = export(nn.Linear(4, 2), (x,))
    answer = answers(backend, program)
    assert all(answer[n.name] for n in program.graph.nodes if n.op in ("placeholder", "output"))


def test_support_answers_for_a_node_kind_it_does_not_convert(backend):
    graph = torch.fx.Graph()
    a = graph.placeholder("a")
    method = graph.call_method("relu", (a,))
    graph.output(method)
    answer = backend.support(method, edgeport.SupportContext(export(nn.ReLU(), (x,)), CoreMLOptions()))
    assert not answer and "call_method" in answer.reason


def test_keep_ops_are_ops_coremltools_converts(backend, registry):
    kept = backend.keep_ops()
    assert kept and all(registry.has_converter(op) for op in kept)
