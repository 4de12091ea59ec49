"""The example models in examples/models.py build, run, stay deterministic and export.

examples/ is a folder of scripts, not a package, so the file is loaded by path, the
same way the CLI loads `examples/models.py:mobilenet_v2`. Also: the plugin template
stays small.
"""

import os
from types import ModuleType

import pytest
from example_models import load_models
import torch


# name -> output shape for the factory's example inputs
OUTPUT_SHAPES = {
    "mobilenet_v2": (1, 1000),
    "resnet18": (1, 1000),
    "transformer_encoder": (1, 10),
    "tiny_llama": (1, 16, 256),
}
CNNS = ("mobilenet_v2", "resnet18")


@pytest.fixture(scope="module")
def models() -> ModuleType:
    return load_models()


@pytest.fixture(scope="module")
def built(models):
    """Each example built once: name -> (model, inputs, eager output)."""
    out = {}
    for name, factory in models.FACTORIES.items():
        model, inputs = factory()
        with torch.no_grad():
            out[name] = (model, inputs, model(*inputs))
    return out


def test_factories_are_the_four_examples(models):
    assert set(models.FACTORIES) == set(OUTPUT_SHAPES)


@pytest.mark.parametrize("name", OUTPUT_SHAPES)
def test_output_shape_and_values(built, name):
    model, inputs, out = built[name]
    assert not model.training
    assert out.shape == OUTPUT_SHAPES[name]
    assert torch.isfinite(out).all()
    assert out.std() > 1e-3, "outputs should not collapse to a constant"


def test_token_models_take_int64_ids(built):
    assert built["transformer_encoder"][1][0].shape == (1, 32)
    assert built["tiny_llama"][1][0].shape == (1, 16)
    assert all(built[n][1][0].dtype == torch.int64 for n in ("transformer_encoder", "tiny_llama"))


def test_cnns_match_published_parameter_counts(built):
    # torchvision's mobilenet_v2() and resnet18() have exactly these many parameters.
    counts = {name: sum(p.numel() for p in built[name][0].parameters()) for name in CNNS}
    assert counts == {"mobilenet_v2": 3_504_872, "resnet18": 11_689_512}


@pytest.mark.parametrize("name", CNNS)
def test_batchnorm_is_not_identity(built, name):
    bns = [m for m in built[name][0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


@pytest.mark.parametrize("name", ["transformer_encoder", "tiny_llama"])
def test_factory_is_deterministic_and_keeps_caller_rng(models, built, name):
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    model, inputs = models.FACTORIES[name]()
    assert torch.equal(torch.rand(4), expected_next)
    assert torch.equal(inputs[0], built[name][1][0])
    with torch.no_grad():
        assert torch.equal(model(*inputs), built[name][2])


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in CNNS else n for n in OUTPUT_SHAPES]
)
def test_export_matches_eager(built, name):
    model, inputs, expected = built[name]
    program = torch.export.export(model, inputs).run_decompositions()
    with torch.no_grad():
        got = program.module()(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "examples", "plugin_template", "edgeport_numpy_npu.py")


def test_the_template_plugin_is_at_most_60_lines_of_code():
    """A vendor's whole backend fits on a screen: lines that are neither blank nor comments."""
    with open(TEMPLATE) as f:
        code = [line for line in f if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 60
