"""Writer cases beyond edgeport's shared conformance cases: the padding, layout, dtype and
variant paths of each lowering (SAME vs explicit PAD, NHWC through reductions and
concat, runtime vs constant weights, int64 and bool at the boundary, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeport.testing import Case
from tflite_helpers import case

IMG = (1, 8, 12, 12)
ODD = (1, 8, 13, 13)


def _conv(m, x):
    return F.conv2d(x, m.w, m.b, padding=1)


def bn_with_stats(channels: int) -> nn.BatchNorm2d:
    """A BatchNorm far from identity, so a wrong fold into the conv shows."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


class _ConvBnShared(nn.Module):
    """A conv whose output is also read besides its batch norm: the norm cannot fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), bn_with_stats(8)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def _module_case(name: str, make, *shapes) -> Case:
    def build():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            module = make().eval()
            inputs = tuple(torch.randn(*s) for s in shapes)
        return module, inputs

    return Case(name, build, 1e-4, frozenset({"block"}))


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _rope(m, x):
    q = x.view(1, 6, 2, 8).transpose(1, 2)  # (B, h, T, hs), stored (B, T, h, hs)
    return q * m.cos + _rotate_half(q) * m.sin


EXTRA_CASES: list[Case] = [
    # convolution padding and shape variants
    case("conv2d_stride2_explicit_pad", lambda m, x: F.conv2d(x, m.w, m.b, stride=2, padding=1), IMG,
         w=(16, 8, 3, 3), b=(16,)),
    case("conv2d_stride2_same", lambda m, x: F.conv2d(x, m.w, stride=2, padding=1), ODD, w=(8, 8, 3, 3)),
    case("conv2d_rect_kernel", lambda m, x: F.conv2d(x, m.w, padding=(1, 2), dilation=(1, 2)), IMG, w=(4, 8, 3, 3)),
    case("conv2d_depth_multiplier", lambda m, x: F.conv2d(x, m.w, padding=1, groups=8), IMG, w=(16, 1, 3, 3)),
    case("conv1d_stride_groups", lambda m, x: F.conv1d(x, m.w, stride=2, padding=2, groups=2), (2, 8, 21),
         w=(6, 4, 5)),
    case("conv_transpose2d_padded", lambda m, x: F.conv_transpose2d(x, m.w, m.b, stride=2, padding=1,
                                                                     output_padding=1), IMG, w=(8, 4, 3, 3), b=(4,)),
    case("conv_transpose1d", lambda m, x: F.conv_transpose1d(x, m.w, stride=2), (1, 8, 10), w=(8, 3, 4)),
    # matrix products
    case("linear_3d_no_bias", lambda m, x: F.linear(x, m.w), (2, 5, 32), w=(16, 32)),
    case("linear_vector", lambda m, x: F.linear(x, m.w, m.b), (32,), w=(16, 32), b=(16,)),
    case("linear_runtime_weight", lambda m, x, w: F.linear(x, w, m.b), (4, 32), (16, 32), b=(16,)),
    case("addmm_runtime", lambda m, x, y: torch.addmm(m.b, x, y), (4, 8), (8, 6), b=(6,)),
    case("matmul_4d_transposed", lambda m, a, b: a @ b.transpose(-1, -2), (2, 3, 5, 8), (2, 3, 7, 8)),
    # elementwise variants
    case("compare_all", lambda m, a: (a < 0.1, a <= 0.1, a > -0.1, a >= a.round(), a == a.round(), a != 0.0),
         (2, 8)),
    case("logical_ops", lambda m, a, b: torch.logical_or(torch.logical_and(a > 0, b > 0), ~(a > b)), (2, 8),
         (2, 8)),
    case("where_scalar", lambda m, a: torch.where(a > 0, a, 0.25), (2, 8)),
    case("pow_general", lambda m, a: a.abs().pow(1.5) + a.pow(3) + (a.abs() + 1).pow(-1) + (a.abs() + 1).pow(-0.5),
         (2, 8)),
    case("reciprocal", lambda m, a: torch.reciprocal(a.abs() + 1), (2, 8)),
    case("clamp_one_sided", lambda m, a: torch.clamp(a, min=-0.2) + torch.clamp(a, max=0.3) + F.hardtanh(a, -2, 2),
         (2, 8)),
    case("int64_arith", lambda m, a, b: a * 3 + b - 1, torch.arange(6).view(2, 3), torch.ones(2, 3, dtype=torch.long)),
    case("casts", lambda m, a: (a.to(torch.int32), (a > 0).float() * a), (2, 8)),
    case("constants_folded", lambda m, a: a + torch.arange(8).float() * torch.ones_like(a), (2, 8)),
    # NHWC carried through layout-sensitive ops
    case("nhwc_flatten_linear", lambda m, x: F.linear(F.relu(_conv(m, x)).flatten(1), m.fc), IMG, w=(4, 8, 3, 3),
         b=(4,), fc=(10, 4 * 12 * 12)),
    case("nhwc_reductions", lambda m, x: (_conv(m, x).sum(1), _conv(m, x).amax(-1), _conv(m, x).mean((1, 2, 3))),
         IMG, w=(4, 8, 3, 3), b=(4,)),
    case("nhwc_softmax_channels", lambda m, x: F.softmax(_conv(m, x), dim=1), IMG, w=(4, 8, 3, 3), b=(4,)),
    case("nhwc_cat_bias", lambda m, x: torch.cat([_conv(m, x), x], 1) + m.c, IMG, w=(4, 8, 3, 3), b=(4,),
         c=(12, 1, 1)),
    case("nhwc_pad", lambda m, x: (F.pad(_conv(m, x), (1, 1, 2, 0)), F.pad(_conv(m, x), (0, 1), value=1.0)), IMG,
         w=(4, 8, 3, 3), b=(4,)),
    case("nhwc_slice_select", lambda m, x: (_conv(m, x)[:, 1:3], _conv(m, x)[:, :, 3], _conv(m, x)[..., ::2]), IMG,
         w=(4, 8, 3, 3), b=(4,)),
    case("nhwc_activations", lambda m, x: (F.silu(_conv(m, x)), F.gelu(_conv(m, x)), F.elu(_conv(m, x))), IMG,
         w=(4, 8, 3, 3), b=(4,)),
    case("nhwc_permute_out", lambda m, x: _conv(m, x).permute(0, 2, 3, 1), IMG, w=(4, 8, 3, 3), b=(4,)),
    # pooling and resizing variants
    case("max_pool_after_relu", lambda m, x: F.max_pool2d(F.relu(_conv(m, x)), 3, 2, 1), IMG, w=(4, 8, 3, 3), b=(4,)),
    case("avg_pool_padded", lambda m, x: F.avg_pool2d(x, 3, 2, 1), IMG),
    case("avg_pool_exclude_pad", lambda m, x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), IMG),
    case("adaptive_avg_pool2d_2x2", lambda m, x: F.adaptive_avg_pool2d(x, 2), IMG),
    case("embedding_bag_mean", lambda m, i: F.embedding_bag(i, m.w, mode="mean"), torch.tensor([[1, 2, 4, 5, 9], [4, 3, 2, 9, 0], [7, 7, 1, 0, 3]]),
         w=(10, 4)),
    case("embedding_bag_sum_offsets", lambda m, i: F.embedding_bag(i, m.w, torch.tensor([0, 2, 4]), mode="sum"),
         torch.tensor([1, 2, 4, 5, 4, 3]), w=(10, 4)),
    case("embedding_bag_max", lambda m, i: F.embedding_bag(i, m.w, mode="max"), torch.tensor([[1, 2, 4], [5, 9, 9]]),
         w=(10, 4)),
    case("conv3d", lambda m, x: F.conv3d(x, m.w), (1, 2, 4, 4, 4), w=(2, 2, 1, 1, 1)),
    case("conv3d_same_bias_relu", lambda m, x: F.relu(F.conv3d(x, m.w, m.b, padding=1)), (1, 3, 5, 6, 7),
         w=(4, 3, 3, 3, 3), b=(4,)),
    case("conv3d_strided_uneven_padding", lambda m, x: F.conv3d(x, m.w, m.b, stride=(1, 2, 2), padding=(1, 0, 2)),
         (1, 3, 5, 6, 7), w=(4, 3, 3, 3, 3), b=(4,)),
    case("adaptive_max_pool2d", lambda m, x: F.adaptive_max_pool2d(x, (2, 4)), IMG),
    case("adaptive_max_pool2d_global_after_relu", lambda m, x: F.adaptive_max_pool2d(F.relu(x), 1), IMG),
    case("upsample_size", lambda m, x: (F.interpolate(x, size=(24, 36)),
                                        F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)), IMG),
    # gathers
    case("index_select", lambda m, x: torch.index_select(x, 1, m.idx), (2, 8, 4), idx=torch.tensor([3, 0, 3])),
    case("embedding_gather", lambda m, ids: F.embedding(ids, m.table), torch.tensor([[1, 4, 0], [2, 2, 9]]),
         table=(10, 6)),
    case("index_constant", lambda m, x: (x[m.rows[:, None], m.cols], x[m.rows]), (3, 5, 4),
         rows=torch.tensor([2, 0]), cols=torch.tensor([4, -1, 1])),
    # full slices before the index tensors: bicubic interpolation's x[:, :, rows, cols], on a NHWC value too
    case("index_constant_after_full_slices", lambda m, x: (x[:, :, m.rows[:, None], m.cols], x[:, m.cols] * 2,
                                                           _conv(m, x)[:, :, m.rows[:, None], m.cols]),
         (2, 8, 5, 6), rows=torch.tensor([4, 0, 2]), cols=torch.tensor([1, -1, 3, 3]), w=(4, 8, 3, 3), b=(4,)),
    case("index_constant_mask_bool", lambda m, mask: mask[m.rows[:, None, None], m.cols[None, None, :]],
         torch.tensor([[True, False, True], [False, True, True]]), rows=torch.tensor([1, 0]),
         cols=torch.tensor([2, 0, 1, 1])),
    # arithmetic beyond one op (ops/arith.py): exact rounding modes, logs, tensor clamps
    case("div_floor", lambda m, a, b: (torch.div(a, b, rounding_mode="floor"), a // 0.1, torch.floor_divide(a, m.d)),
         torch.tensor([1.0, -1.0, 7.5, -7.5, 0.3, -0.3, 5.0, 1.0, -1.0, 0.0]),
         torch.tensor([0.1, 0.1, 2.0, 2.0, -0.2, -0.2, 2.5, 0.0, 0.0, 0.0]),
         d=torch.tensor([0.5, -3.0, 2.0, 0.7, -0.1, 4.0, 1.5, 2.0, 3.0, 9.0])),
    case("div_trunc", lambda m, a, b: torch.div(a, b, rounding_mode="trunc"),
         torch.tensor([7.5, -7.5, 0.3, -0.3, 5.0, -5.0]), torch.tensor([2.0, 2.0, -0.2, -0.2, 2.5, 2.5])),
    case("div_modes_int", lambda m, a, b: (a // b, torch.div(a, b, rounding_mode="trunc")),
         torch.tensor([7, -7, 7, -7, 0, 9]), torch.tensor([2, 2, -2, -2, 3, -4])),
    case("round_trunc", lambda m, a: (torch.round(a), torch.round(a * 3.3, decimals=2),
                                      torch.round(a * 77, decimals=-1), torch.trunc(a * 2.7)),
         torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 1e-7, 3.0, 100.0])),
    case("log1p_log2_log10", lambda m, a: (torch.log1p(a) * 1e7, torch.log2(a + 1), torch.log10(a + 1)),
         torch.tensor([1e-10, 1e-8, 3e-8, 1e-7, 1e-3, 0.5, 8.0, 1000.0])),
    case("clamp_tensor_bounds", lambda m, a, lo: (torch.clamp(a, lo, m.hi), torch.clamp(a, min=lo),
                                                  torch.clamp(a, max=m.hi)), (3, 4), (4,), hi=(3, 1)),
    case("clamp_tensor_int", lambda m, a: torch.clamp(a, m.lo, m.hi), torch.arange(12).view(3, 4),
         lo=torch.tensor([2]), hi=torch.tensor([9])),
    # picks and placements (ops/index.py)
    case("argmax_argmin", lambda m, a: (torch.argmax(a, dim=1), torch.argmin(a, dim=-1, keepdim=True),
                                        torch.argmax(a), torch.argmin(a, 0)),
         torch.tensor([[1.0, 3.0, 3.0, 0.0], [-1.0, -5.0, 2.0, -5.0], [0.5, 0.5, 0.5, 0.5]])),
    # torch.gather with a run-time index, along each dim, the index smaller than the input off its dim
    case("gather_runtime_index", lambda m, x, i, j: (torch.gather(x, 1, i), torch.gather(x, 0, j[:, :2]),
                                                     torch.gather(x > 0, -1, j), torch.gather(m.ids, 1, i[:1, :, 0])),
         (3, 5, 4), torch.tensor([[[4, 0, 1], [2, 2, 3]], [[1, 3, 0], [0, 4, 4]]]),
         torch.tensor([[[2, 0, 1], [2, 2, 0]], [[1, 2, 0], [0, 1, 1]]]), ids=torch.arange(20).view(2, 10)),
    # flip along one dim, two dims, of a NHWC value, and of booleans
    case("flip", lambda m, x: (x.flip(1) * 2, x.flip([0, -1]) + 1, _conv(m, x[:1]).flip(1), (x > 0).flip(2)),
         (2, 8, 6, 6), w=(4, 8, 3, 3), b=(4,)),
    case("argmax_int", lambda m, a: torch.argmax(a, 0), torch.tensor([[1, 3], [4, 3]])),
    # by order (ops/order.py): max/min with indices, topk largest and smallest, sort both ways,
    # along any dim, of a NHWC value too; ties give max.dim's and min.dim's first index
    case("order", lambda m, x: (*torch.max(x, 1), *torch.min(x, -1, keepdim=True), *torch.topk(x, 3, dim=1),
                                *torch.topk(x, 2, largest=False), *torch.sort(x, 2), *torch.sort(x, descending=True),
                                *torch.topk(_conv(m, x[:1]), 2, dim=1)),
         (2, 8, 6, 6), w=(4, 8, 3, 3), b=(4,)),
    case("isnan", lambda m, a: (torch.isnan(a), torch.isnan(a * 2) | (a > 1)),
         torch.tensor([[float("nan"), -0.0, 0.0, -2.5], [3.0, float("inf"), -float("inf"), 1e-30]])),
    # a NaN of the runtime operand carries through minimum/maximum and tensor clamps, as in torch
    # (LiteRT's MAXIMUM/MINIMUM give their second operand where one is NaN: elementwise.minmax)
    case("minmax_nan", lambda m, a, b: (torch.minimum(a, m.c), torch.maximum(m.c, a), torch.minimum(b, a),
                                        torch.maximum(b, a), torch.clamp(a, b, m.c), torch.clamp(a, min=b)),
         torch.tensor([[float("nan"), -0.5, 0.0, 2.5], [3.0, float("inf"), -float("inf"), float("nan")]]), (2, 4),
         c=(4,)),
    # erf (A&S 7.1.26: ops/elementwise.py), alone and in the GELU ESM writes with it; NaN and ±inf too
    case("erf", lambda m, a: (torch.erf(a), a * 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))),
         torch.cat([torch.linspace(-5, 5, 61), torch.tensor([0.0, -1e-3, float("nan"), float("inf"), -float("inf")])])),
    # sign (ops/elementwise.py): NaN gives 0 as in torch (LiteRT's SIGN: NaN); ±0, ±inf, subnormals
    case("sign", lambda m, a: (torch.sign(a), torch.sign(a - 1.0) * a),
         torch.tensor([[float("nan"), -0.0, 0.0, -2.5, 1e-45], [3.0, float("inf"), -float("inf"), -1e-45, 1.0]])),
    case("max_min_dim_ties", lambda m, a: (*torch.max(a, dim=1), *torch.min(a, dim=0)),
         torch.tensor([[1.0, 3.0, 3.0, 0.0], [-1.0, -5.0, 2.0, -5.0], [0.5, 0.5, 0.5, 0.5]])),
    case("slice_scatter", lambda m, a, s: (torch.slice_scatter(a, s, 1, 1, 3), torch.slice_scatter(a, s, 1, 3),
                                           torch.slice_scatter(a, a * 2, 1)), (2, 5), (2, 2)),
    # scatter with one position per row along dim (ops/index.py): a one-hot, src larger than the
    # index, a value, int64; x's NaN and inf elsewhere stay
    case("scatter_one_position_per_row",
         lambda m, x, i: (torch.zeros(4, 10).scatter(1, i[:, None], 1.0), x.scatter(0, i[None, :3] - i[None, :3], m.s),
                          x.scatter(1, i[:, None], -1.5), m.ids.scatter(1, i[:2, None], m.ids[:, :1] * 7)),
         torch.tensor([[float("nan"), 1.0] + [0.5] * 8, [2.0, float("inf")] + [-1.0] * 8] * 2), torch.tensor([3, 0, 9, 3]),
         s=(5, 12), ids=torch.arange(20).view(2, 10)),
    # scatter_add (ops/index.py): repeated positions summed as torch sums them, src larger
    # than the index, along dim 0 and 1; a histogram of labels
    case("scatter_add_repeats",
         lambda m, x, i: (x.scatter_add(1, i, m.s), x.scatter_add(0, m.rows, m.s),
                          torch.zeros(5).scatter_add(0, i.flatten(), torch.ones(6))),
         (2, 5), torch.tensor([[0, 0, 4], [1, 3, 1]]), s=(3, 4), rows=torch.tensor([[1, 0, 1]])),
    # a KV-cache write: one run-time position along dim 2, and a negative one along dim 0
    case("index_put_one_position", lambda m, c, p, k: (c.index_copy(2, p, k), c.index_put((p - 4,), c[:1] * 2),
                                                       torch.index_put(c[0, 0], (p,), k[0, 0, 0])),
         (2, 3, 5, 4), torch.tensor([3]), (2, 3, 1, 4)),
    # attention
    case("sdpa_float_mask", lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m.mask),
         (1, 2, 6, 8), (1, 2, 6, 8), (1, 2, 6, 8), mask=(6, 6)),
    case("sdpa_bool_mask", lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m.keep, scale=0.3),
         (1, 2, 6, 8), (1, 2, 6, 8), (1, 2, 6, 8), keep=torch.ones(6, 6, dtype=torch.bool).tril()),
    case("sdpa_runtime_bool_mask", lambda m, q, mask: F.scaled_dot_product_attention(q, q, q, attn_mask=mask),
         (2, 5, 8), torch.ones(5, 5, dtype=torch.bool).tril()),
    # a padding mask that masks a row whole: torch returns zeros there (a SELECT to -inf made NaN)
    case("sdpa_runtime_bool_mask_row_masked_whole", lambda m, q, mask: F.scaled_dot_product_attention(q, q, q, attn_mask=mask),
         (2, 5, 8), torch.tensor([[True, True, False, False, False]] * 4 + [[False] * 5])),
    case("sdpa_bool_mask_row_masked_whole", lambda m, q: F.scaled_dot_product_attention(q, q, q, attn_mask=m.keep),
         (2, 5, 8), keep=torch.ones(5, 5, dtype=torch.bool).tril().index_fill(0, torch.tensor([2]), False)),
    # multi-query (Falcon): one key/value head for four query heads, the heads merged into the product's rows
    case("sdpa_multi_query", lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m.keep),
         (2, 4, 6, 8), (2, 1, 6, 8), (2, 1, 6, 4), keep=torch.ones(6, 6, dtype=torch.bool).tril()),
    # a padding mask read at constant positions (a reshape, no GATHER_ND) and ANDed with an all-true constant
    case("index_spreading_a_mask", lambda m, mask: m.open & mask[m.rows, m.keys], torch.rand(2, 6) > 0.5,
         rows=torch.arange(2).view(2, 1, 1, 1), keys=torch.arange(6).view(1, 1, 1, 6),
         open=torch.ones(1, 1, 6, 1, dtype=torch.bool)),
    case("or_with_all_false", lambda m, x: (m.shut | (x > 0)).float() * x, (3, 4), shut=torch.zeros(4, dtype=torch.bool)),
    case("rope_rotate_half", _rope, (1, 6, 16), cos=(6, 8), sin=(6, 8)),
    case("repeat_interleave_heads", lambda m, x: (x.repeat_interleave(2, dim=1) @ m.w), (1, 2, 6, 8), w=(8, 4)),
    # data movement variants
    case("split_unequal", lambda m, x: [t * 2 for t in x.split([3, 5], dim=1)], (2, 8)),
    case("slice_step_negative", lambda m, x: (x[:, ::3], x[:, -3:], x[:, -1]), (2, 8, 4)),
    case("expand_many_copies", lambda m, x: x.expand(3, 4, 20) + 1, (1, 4, 1)),
    case("repeat_tile", lambda m, x: x.repeat(2, 1, 3) * 2, (4, 5)),
    case("cat_constant", lambda m, x: torch.cat([x, m.c], dim=0), (2, 8), c=(3, 8)),
    case("mean_all_scalar", lambda m, x: x.mean(), (2, 8)),
    # reductions whose result dtype differs from the input's: torch casts, then reduces
    case("reduce_dtype_argument", lambda m, i, x: (i.mean(1, dtype=torch.float32), i.mean(dtype=torch.float32),
                                                   i.sum(0, dtype=torch.float32), (x * 3).sum(1, dtype=torch.int32)),
         torch.tensor([[1, 2, 4, 7], [-3, 5, 0, 8]]), (2, 4)),
    case("reduce_bool_and_int32", lambda m, b, i, x: (b.sum(1), b.sum(), b.amax(1), b.amin(0), i.sum(1),
                                                      b.mean(1, dtype=torch.float32), (x - x.round()).any(1)),
         torch.tensor([[True, False, True], [False, False, True]]), torch.tensor([[1, 2, 3], [4, 5, 6]],
                                                                                 dtype=torch.int32), (2, 3)),
    # instance norm: a batch norm of (1, N * C, H, W) on its own statistics
    case("instance_norm_affine", lambda m, x: F.instance_norm(x, weight=m.w, bias=m.b), (2, 4, 5, 6), w=(4,), b=(4,)),
    case("instance_norm_1d_plain", lambda m, x: F.instance_norm(x * 3 + 1), (2, 4, 7)),
    # the 2-norm, as F.normalize and torch.norm compute it (over one dim, several, everything)
    case("vector_norm", lambda m, x: (F.normalize(x, dim=-1), torch.linalg.vector_norm(x, dim=(0, 2), keepdim=True),
                                      x.norm(), F.normalize(_conv(m, x[0:1, :8, :6].reshape(1, 8, 6, 1)), dim=1)),
         (2, 8, 6), w=(4, 8, 3, 3), b=(4,)),
    case("layer_norm_2d_no_affine", lambda m, x: F.layer_norm(x, (4, 8)), (2, 4, 8)),
    case("log_softmax_dim0", lambda m, x: F.log_softmax(x, dim=0), (3, 8)),
    case("batch_norm_alone", lambda m, x: F.batch_norm(x * 2, m.mean, m.var.abs() + 0.5, m.g, m.b), (4, 6),
         mean=(6,), var=(6,), g=(6,), b=(6,)),
    _module_case("conv_bn_not_folded", _ConvBnShared, IMG),
    _module_case("conv_transpose_groups_bn_relu",  # the norm folds into each group's weights
                 lambda: nn.Sequential(nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
                                       bn_with_stats(6), nn.ReLU()), (1, 8, 5, 5)),
]

# Modules the writer must decline, the op it names, and words its reason contains.
DECLINED = [
    ("topk_unsorted", case("topk_unsorted", lambda m, x: torch.topk(x, 2, sorted=False), (3, 5)), "aten.topk",
     "sorted=False"),
    ("sort_int", case("sort_int", lambda m, x: torch.sort(x), torch.tensor([[3, 1, 2], [0, 5, 4]])), "aten.sort",
     "int64 input"),
    ("scatter_positions_may_repeat", case("scatter_positions_may_repeat",
                                          lambda m, x, i: x.scatter(1, i, m.s), (2, 5), torch.tensor([[0, 0], [1, 3]]),
                                          s=(2, 2)),
     "scatter", "SCATTER_ND sums repeated positions"),
    ("slice_scatter_step", case("slice_scatter_step", lambda m, a, s: torch.slice_scatter(a, s, 1, 0, 4, 2),
                                (2, 5), (2, 2)), "slice_scatter", "step 2"),
    ("index_put_runtime", case("index_put_runtime", lambda m, a, i, v: torch.index_put(a, (i,), v), (4, 3),
                               torch.tensor([3, 1]), (2, 3)), "aten.index_put", "only one position"),
    ("index_put_accumulate", case("index_put_accumulate", lambda m, a, i, v: torch.index_put(a, (i,), v, True),
                                  (4, 3), torch.tensor([1]), (1, 3)), "aten.index_put", "accumulate"),
    ("index_select_0d", case("index_select_0d", lambda m, x, i: torch.index_select(x, 0, i), torch.tensor(2.5),
                             torch.tensor([0])), "index_select", "0-d input"),
    ("index_runtime", case("index_runtime", lambda m, x, i: x[i], (4, 3), torch.tensor([3, 1])), "aten.index",
     "indices computed at run time"),
    ("float64", case("float64", lambda m, x: x * 2, torch.randn(2, 3, dtype=torch.float64)), "aten.mul", "float64"),
    ("conv3d_groups", case("conv3d_groups", lambda m, x: F.conv3d(x, m.w, groups=2), (1, 2, 4, 4, 4),
                           w=(2, 1, 1, 1, 1)), "aten.convolution", "grouped 3d convolution"),
    ("dilated_pool", case("dilated_pool", lambda m, x: F.max_pool2d(x, 2, dilation=2), IMG), "max_pool2d",
     "dilated"),
    ("embedding_bag_uneven", case("embedding_bag_uneven",
                                  lambda m, i: F.embedding_bag(i, m.w, torch.tensor([0, 1, 4]), mode="sum"),
                                  torch.tensor([1, 2, 4, 5, 4, 3]), w=(10, 4)), "embedding_bag", "equal bags only"),
    ("embedding_bag_weighted", case("embedding_bag_weighted",
                                    lambda m, i, p: F.embedding_bag(i, m.w, per_sample_weights=p, mode="sum"),
                                    torch.tensor([[1, 2, 4], [5, 9, 9]]), (2, 3), w=(10, 4)),
     "embedding_bag", "per_sample_weights"),
    ("adaptive_max_pool2d_uneven", case("adaptive_max_pool2d_uneven", lambda m, x: F.adaptive_max_pool2d(x, 5), IMG),
     "adaptive_max_pool2d", "does not divide"),
    ("adaptive_max_pool2d_indices", case("adaptive_max_pool2d_indices",
                                         lambda m, x: F.adaptive_max_pool2d(x, 2, return_indices=True), IMG),
     "adaptive_max_pool2d", "output 1 is read"),
    ("ceil_mode", case("ceil_mode", lambda m, x: F.avg_pool2d(x, 3, 2, ceil_mode=True), (1, 2, 8, 8)), "avg_pool2d",
     "ceil_mode"),
    ("output_padding", case("output_padding", lambda m, x: F.conv_transpose2d(x, m.w, stride=2, output_padding=1),
                            IMG, w=(8, 4, 3, 3)), "aten.convolution", "output_padding larger than padding"),
    ("max_pool_indices", case("max_pool_indices", lambda m, x: F.max_pool2d(x, 3, 2, 1, return_indices=True), IMG),
     "max_pool2d_with_indices", "output 1 is read"),
    ("layer_norm_stats", case("layer_norm_stats", lambda m, x: torch.native_layer_norm(x, (8,), None, None, 1e-5),
                              (2, 8)), "native_layer_norm", "output 1 is read"),
    ("dropout_sdpa", case("dropout_sdpa", lambda m, q: F.scaled_dot_product_attention(q, q, q, dropout_p=0.5),
                          (1, 2, 4, 8)), "scaled_dot_product_attention", "dropout"),
]
