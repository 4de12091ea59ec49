"""The conformance cases: small op-level and block-level models with inputs.

Each case is one thing a backend may be asked to run. Names are stable: backends'
tests and denylists refer to them.

`MODEL_NEEDS` are the cases real models need beyond single ops: every op the example
models (examples/models.py) and the LLM decoder (edgeport.llm) capture to has a case
(tests/test_case_library_covers_models.py derives the op list from the models and fails
when a model uses an op no case has), plus dynamic dims, multi-output ops, int64 index
ops and in-place writes to buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, tuple[Any, ...]]]
    rtol: float = 1e-4  # relative max error allowed against eager fp32
    tags: frozenset[str] = frozenset()  # "op" or "block", plus what it exercises
    dynamic_shapes: Any = None  # torch.export's dynamic_shapes for the inputs ``build`` makes
    # Inputs of other sizes within those dynamic dims' ranges: the program runs each too.
    resized: Callable[[], tuple[tuple[Any, ...], ...]] | None = None


class Fn(nn.Module):
    """Wraps a function as a module, so a case can be one line."""

    def __init__(self, fn: Callable[..., Any], **params: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        for name, value in params.items():
            self.register_parameter(name, nn.Parameter(value, requires_grad=False))

    def forward(self, *args: Any) -> Any:
        return self.fn(self, *args)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def _seeded(build: Callable[[], tuple[nn.Module, tuple[Any, ...]]]) -> Callable[[], tuple[nn.Module, tuple[Any, ...]]]:
    def wrapped() -> tuple[nn.Module, tuple[Any, ...]]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            module, inputs = build()
        return module.eval(), inputs

    return wrapped


Input = tuple[int, ...] | Callable[[], torch.Tensor]  # a shape (random normal), or a maker


def _input(spec: Input) -> torch.Tensor:
    return spec() if callable(spec) else _x(*spec)


def op(name: str, fn: Callable[..., Any], *inputs: Input, rtol: float = 1e-4,
       **params: tuple[int, ...]) -> Case:
    """A one-function case: ``inputs`` are its inputs' shapes (or makers, for integer
    inputs), ``params`` its weights' shapes."""

    def build() -> tuple[nn.Module, tuple[Any, ...]]:
        weights = {k: _x(*shape) for k, shape in params.items()}
        return Fn(fn, **weights), tuple(_input(s) for s in inputs)

    return Case(name, _seeded(build), rtol, frozenset({"op"}))


def block(name: str, make: Callable[[], nn.Module], *shapes: tuple[int, ...], rtol: float = 1e-4) -> Case:
    return Case(name, _seeded(lambda: (make(), tuple(_x(*s) for s in shapes))), rtol, frozenset({"block"}))


# A BatchNorm's scales are drawn from this range; quantized cases draw negative ones too.
POSITIVE_SCALES = (0.5, 1.5)


def _bn(channels: int, scales: tuple[float, float] = POSITIVE_SCALES) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(*scales)
    bn.bias.data.uniform_(-0.2, 0.2)
    return bn


class _InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual: expand, depthwise, project, add."""

    def __init__(self, scales: tuple[float, float] = POSITIVE_SCALES) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), _bn(32, scales), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), _bn(32, scales),
                                       nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(32, 8, 1, bias=False), _bn(8, scales))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class _Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.norm(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.out(y.transpose(1, 2).reshape(B, T, C))


class _Embedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(50, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * 2.0


def _embedding_case() -> Case:
    return Case(
        "embedding",
        _seeded(lambda: (_Embedding(), (torch.randint(0, 50, (2, 7)),))),
        tags=frozenset({"op"}),
    )


IMG = (1, 8, 12, 12)
# The attribute sweeps below use the sizes ExecuTorch's operator suite uses: 8 channels
# matter (QNN HTP averaged a padded 1-channel pool right and an 8-channel one wrongly).
POOL = (1, 8, 20, 20)
POOL_ODD = (1, 8, 21, 21)
SEQ = (1, 8, 20)
VOLUME = (1, 6, 5, 5, 5)


def _ints() -> torch.Tensor:
    return torch.randint(-5, 10, (3, 5))


# Every pooling and convolution attribute at a non-default value at least once, and the
# combinations a backend got wrong before: each is compared with torch like any case, so
# a backend that takes a node but ignores (or mis-implements) one of its arguments fails.
ATTRIBUTE_SWEEPS: list[Case] = [
    # average pooling
    op("avg_pool2d_k2_s2_p1", lambda m, x: F.avg_pool2d(x, 2, 2, 1), POOL),
    op("avg_pool2d_ceil", lambda m, x: F.avg_pool2d(x, 3, ceil_mode=True), POOL),
    op("avg_pool2d_k3_s2_p1_ceil", lambda m, x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True), POOL_ODD),
    op("avg_pool2d_exclude_pad", lambda m, x: F.avg_pool2d(x, (2, 3), (2, 1), (1, 0), count_include_pad=False), POOL),
    op("avg_pool2d_exclude_pad_ceil", lambda m, x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
       POOL),
    op("avg_pool2d_rect_stride", lambda m, x: F.avg_pool2d(x, (3, 2), stride=(2, 1)), POOL),
    op("avg_pool2d_divisor_override", lambda m, x: F.avg_pool2d(x, 3, 2, 1, divisor_override=4), POOL),
    op("avg_pool1d_ceil", lambda m, x: F.avg_pool1d(x, 3, ceil_mode=True), SEQ),
    op("avg_pool1d_exclude_pad", lambda m, x: F.avg_pool1d(x, 2, 2, 1, count_include_pad=False), SEQ),
    # max pooling
    op("max_pool2d_k2_s2_p1", lambda m, x: F.max_pool2d(x, 2, 2, 1), POOL),
    op("max_pool2d_ceil", lambda m, x: F.max_pool2d(x, 3, ceil_mode=True), POOL),
    op("max_pool2d_k3_s2_p1_ceil", lambda m, x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), POOL_ODD),
    op("max_pool2d_rect_padding", lambda m, x: F.max_pool2d(x, (3, 5), stride=(2, 1), padding=(1, 2)), POOL),
    op("max_pool2d_dilated", lambda m, x: F.max_pool2d(x, (2, 3), (2, 1), (1, 0), dilation=2), POOL),
    op("max_pool2d_indices", lambda m, x: F.max_pool2d(x, 3, 2, 1, return_indices=True), POOL),
    op("max_pool1d_k2_s2_p1_ceil", lambda m, x: F.max_pool1d(x, 2, 2, 1, ceil_mode=True), (1, 8, 21)),
    op("pool3d", lambda m, x: (F.avg_pool3d(x, 2, ceil_mode=True), F.max_pool3d(x, 3, 2, 1)), VOLUME),
    # transposed convolution
    op("conv_transpose3d", lambda m, x: F.conv_transpose3d(x, m.w, m.b, stride=2, padding=1), VOLUME,
       w=(6, 4, 3, 3, 3), b=(4,)),
    op("conv_transpose3d_groups", lambda m, x: F.conv_transpose3d(x, m.w, m.b, groups=3), VOLUME,
       w=(6, 2, 3, 3, 3), b=(6,)),
    op("conv_transpose3d_depthwise", lambda m, x: F.conv_transpose3d(x, m.w, m.b, groups=6), VOLUME,
       w=(6, 1, 3, 3, 3), b=(6,)),
    op("conv_transpose3d_unequal_padding", lambda m, x: F.conv_transpose3d(x, m.w, m.b, padding=(0, 1, 1)), VOLUME,
       w=(6, 4, 3, 3, 3), b=(4,)),
    op("conv_transpose3d_output_padding", lambda m, x: F.conv_transpose3d(x, m.w, m.b, stride=2, output_padding=1),
       VOLUME, w=(6, 4, 3, 3, 3), b=(4,)),
    op("conv_transpose2d_depthwise_output_padding",
       lambda m, x: F.conv_transpose2d(x, m.w, m.b, stride=2, padding=1, output_padding=1, groups=8), IMG,
       w=(8, 1, 3, 3), b=(8,)),
    op("conv_transpose2d_groups_dilation", lambda m, x: F.conv_transpose2d(x, m.w, m.b, groups=2, dilation=2), IMG,
       w=(8, 3, 3, 3), b=(6,)),
    op("conv_transpose1d_groups_output_padding",
       lambda m, x: F.conv_transpose1d(x, m.w, m.b, stride=2, padding=1, output_padding=1, groups=2), (1, 8, 10),
       w=(8, 3, 3), b=(6,)),
    # convolution
    op("conv3d_groups_strided", lambda m, x: F.conv3d(x, m.w, m.b, stride=(1, 2, 2), padding=(0, 1, 1), groups=2),
       VOLUME, w=(6, 3, 3, 3, 3), b=(6,)),
    op("conv3d_dilated", lambda m, x: F.conv3d(x, m.w, m.b, padding=2, dilation=2), VOLUME, w=(4, 6, 3, 3, 3),
       b=(4,)),
    op("conv1d_dilated_padded", lambda m, x: F.conv1d(x, m.w, m.b, padding=2, dilation=2), (1, 4, 8), w=(6, 4, 3),
       b=(6,)),
    op("conv2d_same_dilated", lambda m, x: F.conv2d(x, m.w, m.b, padding="same", dilation=2), IMG, w=(6, 8, 3, 3),
       b=(6,)),
    op("conv2d_asymmetric", lambda m, x: F.conv2d(x, m.w, m.b, stride=(2, 1), padding=(0, 2)), IMG, w=(6, 8, 3, 5),
       b=(6,)),
    # reductions whose result dtype is not their input's
    op("mean_int_to_float", lambda m, x: x.mean(1, dtype=torch.float32), _ints),
    op("reduce_bool", lambda m, x: ((x > 0).sum(1), (x > 0).amax(1), (x > 0.5).any(-1)), (2, 8, 4)),
]

# -- what real models need --------------------------------------------------------------


def _longs(*values: int) -> Callable[[], torch.Tensor]:
    """An int64 input (indices, positions) of fixed values."""
    return lambda: torch.tensor(values)


class _CacheRead(nn.Module):
    """A KV cache write as the LLM decoder makes it (``edgeport.llm.model.Layer``): read
    the old cache, then copy this call's rows in at int64 ``positions``, in place. Nothing
    reads the new cache, so the program writes it back as a row update (`state_rows`)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.randn(2, 8, 4))  # (kv, S, d)

    def forward(self, q: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(q, self.cache.transpose(1, 2))  # (kv, T, S)
        self.cache.index_copy_(1, positions, rows)
        return scores


class _CacheWriteRead(_CacheRead):
    """The in-place write read back in the same call: the backend computes the write."""

    def forward(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        self.cache.index_copy_(1, positions, rows)
        return self.cache * 2.0


class _PositionMask(nn.Module):
    """The LLM decoder's cache mask: the positions before the chunk's first one (an int64
    compare against a buffer), as an additive -inf mask under a softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("index", torch.arange(8))

    def forward(self, scores: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        mask = torch.where(self.index < positions[:1], 0.0, float("-inf"))
        return torch.softmax(scores + mask, dim=-1)


def _case_with_inputs(name: str, make: Callable[[], nn.Module], *inputs: Input) -> Case:
    return Case(name, _seeded(lambda: (make(), tuple(_input(s) for s in inputs))), tags=frozenset({"block"}))


BATCH = torch.export.Dim("batch", min=1, max=8)
TOKENS = torch.export.Dim("tokens", min=2, max=16)


def _dynamic(name: str, make: Callable[[], nn.Module], shape: tuple[int, ...], dims: dict[int, Any],
             *resized: tuple[int, ...]) -> Case:
    """A case whose one input has dynamic ``dims``, run at its example size and at each
    ``resized`` shape."""

    def other_sizes() -> tuple[tuple[torch.Tensor], ...]:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return tuple((_x(*s),) for s in resized)

    return Case(name, _seeded(lambda: (make(), (_x(*shape),))), tags=frozenset({"block", "dynamic"}),
                dynamic_shapes=(dims,), resized=other_sizes)


# Every op the example models and the LLM decoder capture to has a case (the test named in
# the module docstring checks it), and the situations they put those ops in.
MODEL_NEEDS: list[Case] = [
    # ops of the Llama decoders
    op("linear_no_bias", lambda m, x: F.linear(x, m.w), (4, 32), w=(16, 32)),  # mm of a 2-d input
    op("repeat", lambda m, x: x.repeat(2, 3), (3, 4)),
    op("logical_ops", lambda m, a, b: torch.where(torch.logical_and(~(a > 0), b <= 0.5), a, b), (2, 8), (2, 8)),
    # GPT-2's attention mask: a constant causal mask ANDed with a run-time one, and an OR
    op("bool_and_or", lambda m, a, b: (((a > 0) & (b < 0.5)) | (torch.ones(8, 8, dtype=torch.bool).tril() & (b > 0)))
       .float() * a, (8, 8), (8, 8)),
    op("slice_whole", lambda m, x: x[:, :8] * 2, (2, 8)),
    _case_with_inputs("position_mask", _PositionMask, (2, 8), _longs(5, 6)),
    # int64 index ops
    op("index_select", lambda m, x, i: x.index_select(0, i), (6, 8), _longs(4, 0, 2, 4)),
    op("gather", lambda m, x, i: torch.gather(x, 1, i), (3, 8), lambda: torch.randint(0, 8, (3, 5))),
    # multi-output ops: values and int64 indices
    op("topk", lambda m, x: torch.topk(x, 3, dim=-1), (2, 8)),
    op("max_dim", lambda m, x: torch.max(x, dim=-1), (2, 8, 4)),
    # in-place writes to buffers (program state)
    _case_with_inputs("buffer_row_update", _CacheRead, (2, 3, 4), (2, 3, 4), _longs(5, 1, 2)),
    _case_with_inputs("buffer_write_read", _CacheWriteRead, (2, 3, 4), _longs(5, 1, 2)),
    # dynamic dims
    _dynamic("dynamic_batch_linear", lambda: nn.Linear(32, 16), (2, 32), {0: BATCH}, (5, 32), (1, 32)),
    _dynamic("dynamic_tokens_attention", _Attention, (1, 6, 32), {1: TOKENS}, (1, 11, 32), (1, 2, 32)),
]

CASES: list[Case] = [
    # convolutions
    op("conv2d", lambda m, x: F.conv2d(x, m.w, m.b, padding=1), IMG, w=(16, 8, 3, 3), b=(16,)),
    op("conv2d_stride_dilation", lambda m, x: F.conv2d(x, m.w, stride=2, dilation=2, padding=2), IMG, w=(8, 8, 3, 3)),
    op("conv2d_groups", lambda m, x: F.conv2d(x, m.w, groups=2), IMG, w=(8, 4, 3, 3)),
    op("conv2d_depthwise", lambda m, x: F.conv2d(x, m.w, padding=1, groups=8), IMG, w=(8, 1, 3, 3)),
    op("conv1d", lambda m, x: F.conv1d(x, m.w, m.b, padding=1), (1, 8, 20), w=(4, 8, 3), b=(4,)),
    op("conv_transpose2d", lambda m, x: F.conv_transpose2d(x, m.w, stride=2), IMG, w=(8, 4, 3, 3)),
    # matrix products
    op("linear", lambda m, x: F.linear(x, m.w, m.b), (4, 32), w=(16, 32), b=(16,)),
    op("matmul", lambda m, a, b: a @ b, (2, 5, 8), (2, 8, 6)),
    op("bmm", lambda m, a, b: torch.bmm(a, b), (3, 4, 8), (3, 8, 5)),
    # elementwise arithmetic
    op("add_broadcast", lambda m, a, b: a + b, (2, 3, 4), (3, 1)),
    op("sub_scalar", lambda m, a: a - 1.5, (2, 8)),
    op("mul_broadcast", lambda m, a, b: a * b, (2, 3, 4), (4,)),
    op("div", lambda m, a, b: a / (b.abs() + 1), (2, 8), (2, 8)),
    op("neg_abs", lambda m, a: (-a).abs(), (2, 8)),
    op("minimum_maximum", lambda m, a, b: torch.maximum(a, b) - torch.minimum(a, b), (2, 8), (2, 8)),
    op("exp_log", lambda m, a: torch.log(torch.exp(a) + 1), (2, 8)),
    op("sqrt_rsqrt", lambda m, a: torch.sqrt(a.abs() + 1) + torch.rsqrt(a.abs() + 1), (2, 8)),
    op("pow_scalar", lambda m, a: torch.pow(a, 2.0), (2, 8)),
    op("cos_sin", lambda m, a: torch.cos(a) * torch.sin(a), (2, 8)),
    op("where_compare", lambda m, a, b: torch.where(a > b, a, b * 2), (2, 8), (2, 8)),
    # activations
    op("relu", lambda m, x: F.relu(x), (2, 16)),
    op("relu6", lambda m, x: F.relu6(x * 4), (2, 16)),
    op("clamp", lambda m, x: torch.clamp(x, -0.5, 0.7), (2, 16)),
    op("sigmoid", lambda m, x: torch.sigmoid(x), (2, 16)),
    op("tanh", lambda m, x: torch.tanh(x), (2, 16)),
    op("gelu", lambda m, x: F.gelu(x), (2, 16)),
    op("gelu_tanh", lambda m, x: F.gelu(x, approximate="tanh"), (2, 16)),
    op("silu", lambda m, x: F.silu(x), (2, 16)),
    op("hardswish", lambda m, x: F.hardswish(x * 4), (2, 16)),
    op("hardsigmoid", lambda m, x: F.hardsigmoid(x * 4), (2, 16)),
    op("leaky_relu", lambda m, x: F.leaky_relu(x, 0.1), (2, 16)),
    op("elu", lambda m, x: F.elu(x), (2, 16)),
    op("softmax", lambda m, x: F.softmax(x, dim=-1), (2, 4, 16)),
    op("log_softmax", lambda m, x: F.log_softmax(x, dim=-1), (2, 16)),
    # reductions and pooling
    op("mean_dims", lambda m, x: x.mean(dim=(2, 3), keepdim=True), IMG),
    op("sum_dim", lambda m, x: x.sum(dim=1), (2, 8, 4)),
    op("amax_amin", lambda m, x: x.amax(dim=-1) - x.amin(dim=-1), (2, 8, 4)),
    op("max_pool2d", lambda m, x: F.max_pool2d(x, 3, stride=2, padding=1), IMG),
    op("avg_pool2d", lambda m, x: F.avg_pool2d(x, 2), IMG),
    op("adaptive_avg_pool2d", lambda m, x: F.adaptive_avg_pool2d(x, 1), IMG),
    # normalization
    op("layer_norm", lambda m, x: F.layer_norm(x, (32,), m.w, m.b), (2, 5, 32), w=(32,), b=(32,)),
    op("group_norm", lambda m, x: F.group_norm(x, 2, m.w, m.b), (2, 8, 6, 5), w=(8,), b=(8,)),
    # wav2vec2's feature encoder: one channel per group, after a convolution (a layout the writer permutes)
    op("group_norm_per_channel", lambda m, x: F.group_norm(F.conv1d(x, m.k), 4, m.w, m.b), (1, 4, 30), k=(4, 4, 3),
       w=(4,), b=(4,)),
    # data movement
    op("cat", lambda m, a, b: torch.cat([a, b], dim=1), (2, 3, 4), (2, 5, 4)),
    op("split_chunk", lambda m, x: torch.chunk(x, 2, dim=-1)[0] * torch.split(x, 4, dim=-1)[1], (2, 8)),
    op("slice", lambda m, x: x[:, 1:5], (2, 8)),
    op("select", lambda m, x: x[:, 2], (2, 8, 4)),
    op("reshape", lambda m, x: x.reshape(4, 12) + 1, (2, 3, 8)),
    op("permute_transpose", lambda m, x: x.permute(0, 2, 1).transpose(0, 1) + 1, (2, 3, 4)),
    op("squeeze_unsqueeze", lambda m, x: x.squeeze(1).unsqueeze(0) + 1, (2, 1, 4)),
    op("expand", lambda m, x: x.expand(3, 4, 5) + 1, (1, 4, 5)),
    op("constant_pad", lambda m, x: F.pad(x, (1, 2, 0, 1), value=0.5), IMG),
    op("upsample_nearest", lambda m, x: F.interpolate(x, scale_factor=2, mode="nearest"), IMG),
    op("upsample_bilinear", lambda m, x: F.interpolate(x, scale_factor=2, mode="bilinear"), IMG),
    op("cumsum", lambda m, x: torch.cumsum(x, dim=-1), (2, 8)),
    _embedding_case(),
    # blocks
    block("conv_bn_relu", lambda: nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), _bn(16), nn.ReLU()), IMG),
    block("inverted_residual", _InvertedResidual, IMG),
    block("attention", _Attention, (1, 6, 32)),
    block("mlp_gelu", lambda: nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)), (3, 32)),
    *ATTRIBUTE_SWEEPS,
    *MODEL_NEEDS,
]
