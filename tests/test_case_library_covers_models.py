"""The conformance library keeps up with real models: every op the four example models
(examples/models.py) and the LLM decoder (edgeport.llm's prefill and decode) capture to
has a case that captures to it too.

The op list is derived from the models, not written down: a model that starts using a
new op fails `test_every_op_the_models_use_has_a_case` until a case for it joins
`edgeport.testing.CASES` and is named in `COVERED_BY`. Each model is captured twice:
decomposed to core ATen, and keeping the ops the built-in backends keep whole
(`keep_ops`: linear, scaled_dot_product_attention, matmul...), since that is the form
those backends are asked about.

    python tests/test_case_library_covers_models.py     # prints op -> models -> case
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from edgeport.capture import _decompose
from edgeport.llm.config import DecoderConfig
from edgeport.llm.model import Decode, Decoder, Prefill
from edgeport.testing import CASES
from example_models import load_models

pytestmark = pytest.mark.slow  # six captures and the ~35 named cases' captures

# The case that covers each op, by the op's name. `test_each_named_case_captures_to_its_op`
# checks every entry, so this index cannot claim a case that lost its op.
COVERED_BY = {
    "getitem": "split_chunk",
    "aten._native_batch_norm_legit_no_training.default": "conv_bn_relu",
    "aten._softmax.default": "softmax",
    "aten.add.Tensor": "add_broadcast",
    "aten.addmm.default": "linear",
    "aten.alias.default": "slice_whole",
    "aten.any.dim": "attention",
    "aten.arange.start_step": "attention",
    "aten.bitwise_not.default": "logical_ops",
    "aten.bmm.default": "bmm",
    "aten.cat.default": "cat",
    "aten.clone.default": "attention",
    "aten.convolution.default": "conv2d",
    "aten.div.Tensor": "div",
    "aten.embedding.default": "embedding",
    "aten.eq.Scalar": "attention",
    "aten.expand.default": "expand",
    "aten.full.default": "attention",
    "aten.full_like.default": "attention",
    "aten.gelu.default": "gelu",
    "aten.hardtanh.default": "relu6",
    "aten.index_put.default": "buffer_row_update",
    "aten.index_select.default": "index_select",
    "aten.le.Scalar": "logical_ops",
    "aten.linear.default": "linear",
    "aten.logical_and.default": "logical_ops",
    "aten.logical_not.default": "attention",
    "aten.lt.Tensor": "position_mask",
    "aten.matmul.default": "matmul",
    "aten.max_pool2d_with_indices.default": "max_pool2d",
    "aten.mean.dim": "mean_dims",
    "aten.mm.default": "linear_no_bias",
    "aten.mul.Scalar": "attention",
    "aten.mul.Tensor": "mul_broadcast",
    "aten.native_layer_norm.default": "layer_norm",
    "aten.neg.default": "neg_abs",
    "aten.permute.default": "permute_transpose",
    "aten.pow.Tensor_Scalar": "pow_scalar",
    "aten.relu.default": "relu",
    "aten.repeat.default": "repeat",
    "aten.rsqrt.default": "sqrt_rsqrt",
    "aten.scalar_tensor.default": "position_mask",
    "aten.scaled_dot_product_attention.default": "attention",
    "aten.sigmoid.default": "sigmoid",
    "aten.slice.Tensor": "slice",
    "aten.split_with_sizes.default": "split_chunk",
    "aten.sub.Tensor": "sub_scalar",
    "aten.unsqueeze.default": "squeeze_unsqueeze",
    "aten.view.default": "reshape",
    "aten.where.self": "where_compare",
}


def _kept_whole() -> set:
    """What the built-in backends keep undecomposed (their `keep_ops`)."""
    from edgeport.backends.coreml import CoreMLBackend
    from edgeport.backends.cpu import CpuBackend
    from edgeport.backends.mediatek import MediatekBackend
    from edgeport.backends.qualcomm import QualcommBackend

    return {op for b in (CpuBackend(), MediatekBackend(), CoreMLBackend(), QualcommBackend()) for op in b.keep_ops()}


def ops_of(module: torch.nn.Module, inputs: tuple, keep: set = frozenset()) -> set[str]:
    """The ops ``module`` captures to, by name: decomposed to core ATen, and (if ``keep``)
    also decomposed except ``keep``; one torch.export for both."""
    exported = torch.export.export(module, inputs, strict=False)
    graphs = [_decompose(exported, set())] + ([_decompose(exported, set(keep))] if keep else [])
    return {str(n.target) if isinstance(n.target, torch._ops.OpOverload) else n.target.__name__
            for graph in graphs for n in graph.graph.nodes if n.op == "call_function"}


def _llm_methods() -> dict[str, tuple[torch.nn.Module, tuple]]:
    """edgeport.llm's two methods on a one-layer decoder, as `edgeport.llm.export` traces them."""
    config = DecoderConfig("llama", vocab_size=64, hidden_size=32, intermediate_size=48, layers=1, heads=4,
                           kv_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0)
    decoder = Decoder(config, max_seq_len=16)
    return {"llm decode": (Decode(decoder), (torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]))),
            "llm prefill": (Prefill(decoder), (torch.zeros(1, 4, dtype=torch.long), torch.arange(4), torch.tensor([3])))}


def model_ops() -> dict[str, set[str]]:
    """op -> the models that capture to it (decomposed, and with the kept ops kept)."""
    models = load_models()
    methods = {name: models.FACTORIES[name]() for name in ("mobilenet_v2", "resnet18", "transformer_encoder",
                                                            "tiny_llama")}
    methods.update(_llm_methods())
    keep = _kept_whole()
    used = defaultdict(set)
    for name, (module, inputs) in methods.items():
        torch.manual_seed(0)
        for op in ops_of(module, inputs, keep):
            used[op].add(name)
    return dict(used)


@pytest.fixture(scope="module")
def used() -> dict[str, set[str]]:
    return model_ops()


def test_every_op_the_models_use_has_a_case(used):
    missing = {op: sorted(models) for op, models in used.items() if op not in COVERED_BY}
    assert missing == {}, "add a case for each op (edgeport.testing.cases.MODEL_NEEDS) and name it in COVERED_BY"


def test_each_named_case_captures_to_its_op():
    cases = {c.name: c for c in CASES}
    by_case = defaultdict(set)
    for op, name in COVERED_BY.items():
        by_case[name].add(op)
    keep = _kept_whole()
    for name, ops in by_case.items():
        module, inputs = cases[name].build()
        captured = ops_of(module, inputs, keep if any(str(op) in ops for op in keep) else frozenset())
        assert ops <= captured, (name, ops - captured)


def test_the_library_has_what_real_models_need_beyond_single_ops():
    """Dynamic dims, multi-output ops, int64 index inputs and in-place buffer writes."""
    names = {c.name for c in CASES}
    assert {c.name for c in CASES if "dynamic" in c.tags and c.dynamic_shapes and c.resized} >= {
        "dynamic_batch_linear", "dynamic_tokens_attention"}
    assert {"topk", "max_dim", "max_pool2d_indices", "split_chunk"} <= names  # multi-output
    assert {"index_select", "gather", "embedding", "position_mask"} <= names  # int64 index inputs
    assert {"buffer_row_update", "buffer_write_read"} <= names  # index_copy_ into a buffer


if __name__ == "__main__":
    for op, models in sorted(model_ops().items()):
        print(f"{op:50} {COVERED_BY.get(op, 'NO CASE'):20} {', '.join(sorted(models))}")
