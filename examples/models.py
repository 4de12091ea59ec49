"""Example models for edgeport: two CNNs and two small transformers, defined here.

These are the models the CLI, the tests and the benchmarks lower, e.g.
`edgeport export examples/models.py:mobilenet_v2 -o mbv2.edgeport`. They are written out instead of
imported from torchvision (which has no CPU build on the project's machines) and
carry no downloaded weights: every factory seeds its own RNG, so the same call
always returns the same weights and the same example inputs.

BatchNorm layers get non-trivial running statistics and affine parameters, because
a freshly initialised BatchNorm (mean 0, var 1, weight 1, bias 0) is nearly the
identity, and a backend that folds it into the preceding conv wrongly would still
match eager.

Layout: helpers, then building blocks, then the four models, then the factories.
Each factory takes no arguments and returns `(model.eval(), example_inputs)`.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# -----------------------------------------------------------------------------
# helpers


@torch.no_grad()
def init_cnn_weights(model: nn.Module) -> None:
    """He-initialise convs, make every BatchNorm a non-identity affine map, shrink the classifier.

    Values are drawn from the (seeded) global RNG in module order, so the result is
    deterministic for a given seed. The BatchNorm ranges keep activations at a sane
    scale through 50+ layers.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.normal_(m.bias, 0.0, 0.01)


@torch.no_grad()
def init_transformer_weights(model: nn.Module) -> None:
    """GPT-2 style N(0, 0.02) init for linears and embeddings.

    Biases are small but non-zero, and norm gains are spread around 1, so a backend
    that drops either one no longer matches eager.
    """
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            nn.init.uniform_(p, 0.8, 1.2)
        else:
            nn.init.normal_(p, 0.0, 0.02)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free conv ("same" padding for odd kernels) followed by BatchNorm."""
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


def rotary_cos_sin(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for rotary position embeddings, each (seq_len, head_dim)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) queries or keys by position ("rotate half" form)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, nh, T, hs)
    return x * cos + rotated * sin


# -----------------------------------------------------------------------------
# CNN blocks


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += conv_bn(hidden, c_out, 1)  # linear bottleneck: no activation
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs, with a 1x1 projection shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2, self.bn2 = conv_bn(c_out, c_out, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(*conv_bn(c_in, c_out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


# -----------------------------------------------------------------------------
# transformer blocks


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention through F.scaled_dot_product_attention."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer with a GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RMSNorm(nn.Module):
    """x / rms(x) * gain, written out so the graph shows the pow/mean/rsqrt ops."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class CausalGQAttention(nn.Module):
    """Grouped-query causal attention with rotary embeddings, Llama style.

    Attention is written out (matmul, additive mask, softmax, matmul) rather than
    through scaled_dot_product_attention, so this model exercises the plain-op path
    while TransformerEncoder exercises the fused one.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.wq = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=1)  # (B, nh, T, hs)
        v = v.repeat_interleave(group, dim=1)  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim) + mask  # (B, nh, T, T)
        y = att.softmax(dim=-1) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.wo(y)


class SwiGLU(nn.Module):
    """Llama MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    """Pre-RMSNorm decoder block: causal GQA attention, then SwiGLU."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, mlp_hidden: int):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = CausalGQAttention(d_model, n_heads, n_kv_heads)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, mlp_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


# -----------------------------------------------------------------------------
# models


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) at width multiplier 1.0: 3.5M parameters."""

    # (expand ratio t, output channels c, repeats n, first stride s), from Table 2 of the paper
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        c_in, c_last = 32, 1280
        layers: list[nn.Module] = [*conv_bn(3, c_in, 3, stride=2), nn.ReLU6(inplace=True)]
        for t, c_out, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        layers += [*conv_bn(c_in, c_last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(c_last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 1280, 7, 7) for 224x224 input
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 1280)
        return self.classifier(x)  # (B, num_classes)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2015) with BasicBlocks [2, 2, 2, 2]: 11.7M parameters."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 64, 7, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self.stage(64, 64, stride=1)
        self.layer2 = self.stage(64, 128, stride=2)
        self.layer3 = self.stage(128, 256, stride=2)
        self.layer4 = self.stage(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    @staticmethod
    def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        """Two BasicBlocks; the first one changes width and resolution."""
        return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, 56, 56) for 224x224 input
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        x = self.avgpool(x).flatten(1)  # (B, 512)
        return self.fc(x)  # (B, num_classes)


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 1000
    max_seq_len: int = 32
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    num_classes: int = 10  # a small sequence-classification head, so the output is logits


class TransformerEncoder(nn.Module):
    """BERT-like sequence classifier: token + learned position embeddings, encoder layers, mean pool."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)  # (T,)
        x = self.tok_emb(ids) + self.pos_emb(pos)  # (B, T, C)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x).mean(dim=1)  # (B, C)
        return self.head(x)  # (B, num_classes)


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256  # byte-level vocabulary
    max_seq_len: int = 16
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2  # two query heads share each key/value head (grouped-query attention)
    n_layers: int = 2
    mlp_hidden: int = 352  # about 8/3 * d_model rounded up to a multiple of 32, as Llama sizes SwiGLU


class TinyLlama(nn.Module):
    """A two-layer Llama-style decoder returning next-token logits for every position."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            LlamaBlock(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden) for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rotary_cos_sin(cfg.max_seq_len, cfg.d_model // cfg.n_heads)
        # Tables are derived from the config, not learned: keep them out of the state dict.
        self.register_buffer("cos", cos, persistent=False)  # (max_T, hs)
        self.register_buffer("sin", sin, persistent=False)  # (max_T, hs)
        causal = torch.full((cfg.max_seq_len, cfg.max_seq_len), float("-inf")).triu(diagonal=1)
        self.register_buffer("mask", causal, persistent=False)  # (max_T, max_T): 0 on/below diagonal

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        cos, sin, mask = self.cos[:T], self.sin[:T], self.mask[:T, :T]
        x = self.tok_emb(ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))  # (B, T, vocab)


# -----------------------------------------------------------------------------
# factories: each returns (model.eval(), example_inputs), the same on every call

Example = tuple[nn.Module, tuple[torch.Tensor, ...]]
SEED = 0  # every example draws its weights and inputs from this seed


def _build(
    make_model: Callable[[], nn.Module],
    init: Callable[[nn.Module], None],
    make_inputs: Callable[[], tuple[torch.Tensor, ...]],
) -> Example:
    """Build, initialise and draw inputs under SEED, leaving the caller's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = make_model()
        init(model)
        return model.eval(), make_inputs()


def image() -> tuple[torch.Tensor]:
    """One random 224x224 RGB image, (1, 3, 224, 224)."""
    return (torch.randn(1, 3, 224, 224),)


def token_ids(vocab_size: int, seq_len: int) -> tuple[torch.Tensor]:
    """One random int64 token sequence, (1, seq_len)."""
    return (torch.randint(0, vocab_size, (1, seq_len)),)


def mobilenet_v2() -> Example:
    """MobileNetV2 on one 224x224 RGB image; returns (1, 1000) logits."""
    return _build(MobileNetV2, init_cnn_weights, image)


def resnet18() -> Example:
    """ResNet-18 on one 224x224 RGB image; returns (1, 1000) logits."""
    return _build(ResNet18, init_cnn_weights, image)


def transformer_encoder() -> Example:
    """Two-layer encoder on 32 int64 token ids; returns (1, 10) class logits."""
    cfg = EncoderConfig()
    return _build(
        lambda: TransformerEncoder(cfg), init_transformer_weights, lambda: token_ids(cfg.vocab_size, cfg.max_seq_len)
    )


def tiny_llama() -> Example:
    """Two-layer Llama-style decoder on 16 int64 token ids; returns (1, 16, 256) logits."""
    cfg = LlamaConfig()
    return _build(
        lambda: TinyLlama(cfg), init_transformer_weights, lambda: token_ids(cfg.vocab_size, cfg.max_seq_len)
    )


FACTORIES: dict[str, Callable[[], Example]] = {
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "transformer_encoder": transformer_encoder,
    "tiny_llama": tiny_llama,
}
