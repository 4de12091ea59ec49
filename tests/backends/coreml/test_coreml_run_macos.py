"""Running Core ML artifacts against eager torch: needs macOS (skipped elsewhere).

fp16 is Core ML's default precision, so fp16 results are held to a relative error of
2e-2; fp32 runs (CPU_ONLY) to 1e-4.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

from coreml_helpers import EXAMPLES, Lambda, export, load_example, macos_only  # noqa: E402
from edgeport.backends.coreml import CoreMLOptions  # noqa: E402
from edgeport.testing import compare  # noqa: E402

pytestmark = macos_only

image = torch.randn(1, 8, 8, 8)
tokens = torch.randn(2, 6, 16)
qkv = torch.randn(1, 2, 6, 8)
CASES = {
    "conv_relu": (nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU()), (image,)),
    "linear_softmax": (nn.Sequential(nn.Linear(16, 8), nn.Softmax(-1)), (tokens,)),
    "layer_norm": (nn.LayerNorm(16), (tokens,)),
    "attention": (Lambda(lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), (qkv, qkv, qkv)),
    "pooling": (nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2)), (image,)),
    "cat_reshape": (Lambda(lambda a, b: torch.cat([a, b], 1).reshape(2, -1)), (image, image)),
}
FP32 = CoreMLOptions(compute_units="CPU_ONLY", compute_precision="fp32")


def run(backend, module, inputs, options):
    artifact = backend.compile(export(module, inputs), options)
    artifact.options = options
    return backend.load(artifact).run(list(inputs))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("options, rtol", [(CoreMLOptions(), 2e-2), (FP32, 1e-4)], ids=["fp16", "fp32"])
def test_op_case_matches_eager(backend, case, options, rtol):
    module, inputs = CASES[case]
    with torch.no_grad():
        expected = module.eval()(*inputs)
    assert compare(run(backend, module, inputs, options), [expected]) <= rtol


def test_integer_and_boolean_values_come_back_with_their_dtypes(backend):
    module = Lambda(lambda ids, keep: (ids * 2 + 1, keep & (ids > 3)))
    inputs = (torch.randint(0, 9, (2, 3)), torch.rand(2, 3) > 0.5)
    doubled, kept = run(backend, module, inputs, CoreMLOptions())
    assert doubled.dtype == torch.int64 and torch.equal(doubled, inputs[0] * 2 + 1)
    assert kept.dtype == torch.bool and torch.equal(kept, inputs[1] & (inputs[0] > 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_model_matches_eager_in_fp16(backend, name):
    model, inputs = load_example(name)
    with torch.no_grad():
        expected = model(*inputs)
    assert compare(run(backend, model, inputs, CoreMLOptions()), [expected]) <= 5e-2
