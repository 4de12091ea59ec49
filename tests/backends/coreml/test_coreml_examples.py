"""The four example models (examples/models.py) convert to Core ML whole.

Each is captured as edgeport captures it for coreml, every node is taken, the whole
program converts, and the artifact reads back with the model's interface and the MIL
ops its layers should become. Through the full pipeline (edgeport.export), every
compute node lands on coreml, and running here gives the clear macOS error.
"""

import pytest

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

import edgeport  # noqa: E402
from coreml_helpers import EXAMPLES, ON_MACOS, Converted, export, load_example, user_io  # noqa: E402
from edgeport.backends.coreml import CoreMLOptions  # noqa: E402
from edgeport.backends.coreml.convert import CARRIER  # noqa: E402
from edgeport.testing import registry_for  # noqa: E402

# name -> MIL ops (with counts) its layers must become
EXPECTED_OPS = {
    "mobilenet_v2": {"conv": 52, "clip": 35, "linear": 1},  # batch norms folded into the convs
    "resnet18": {"conv": 20, "relu": 17, "max_pool": 1, "linear": 1},
    "transformer_encoder": {"layer_norm": 5, "softmax": 2, "gelu": 2, "gather": 1},
    "tiny_llama": {"rsqrt": 5, "softmax": 2, "silu": 2, "gather": 1},
}
CNNS = ("mobilenet_v2", "resnet18")  # seconds each to capture and convert: slow


def params(names):
    return [pytest.param(n, marks=pytest.mark.slow if n in CNNS else ()) for n in names]


@pytest.fixture(scope="module", params=params(EXPECTED_OPS))
def example(request, backend):
    model, inputs = load_example(request.param)
    program = export(model, inputs)
    return request.param, program, Converted.of(backend, program)


def test_every_example_model_is_covered():
    assert set(EXPECTED_OPS) == set(EXAMPLES)


def test_coremltools_takes_every_node(backend, example):
    _, program, _ = example
    ctx = edgeport.SupportContext(program, CoreMLOptions())
    assert {n.name: backend.support(n, ctx).reason for n in program.graph.nodes if not backend.support(n, ctx)} == {}


def test_converted_interface_is_the_models(example):
    _, program, converted = example
    inputs, outputs = user_io(program)
    assert [(f.name, f.shape, f.dtype) for f in converted.description.inputs] == [
        (n, s, CARRIER[d]) for n, s, d in inputs
    ]
    assert [(f.name, f.shape, f.dtype) for f in converted.description.outputs] == [
        (n, s, CARRIER[d]) for n, s, d in outputs
    ]


def test_layers_become_the_expected_mil_ops(example):
    name, _, converted = example
    ops = converted.description.mil_ops
    assert {op: ops.get(op) for op in EXPECTED_OPS[name]} == EXPECTED_OPS[name]


@pytest.mark.parametrize("name", params(["transformer_encoder", "resnet18"]))
def test_pipeline_puts_every_compute_node_on_coreml(backend, name):
    model, inputs = load_example(name)
    program = edgeport.export(model, inputs, ["coreml"], registry=registry_for(backend))
    placements = {n["backend"] for n in program.report()["nodes"]}
    assert placements == {"coreml"}
    if not ON_MACOS:
        with pytest.raises(edgeport.EdgeportError, match=r"Core ML runs only on macOS \(this is Linux\)"):
            program(*inputs)
