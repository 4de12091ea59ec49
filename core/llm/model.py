"""An export-friendly Llama-family decoder with a static KV cache, and its two methods.

`Decoder` holds the weights (fused for few, large matmuls: q/k/v in one linear,
gate/up in one), a KV cache per layer as registered buffers of shape
``(kv_heads, max_seq_len, head_dim)`` (``(max_seq_len, kv_heads, head_dim)`` when
``seq_major``, below), and rotary tables for every cache position.
`Prefill` and `Decode` wrap one `Decoder`, so both methods of the exported program
share its buffers, the cache among them, as program state.

Attention never concatenates the cache with the new keys and values (that would copy
the whole cache inside the delegate on every token). It scores the old cache, masked
beyond the chunk's first position, and the chunk's own rows, causally, side by side:

    scores = [q · K_cacheᵀ + old_mask | q · k_newᵀ + causal_mask]   # (kv, group·T, S + T)
    out    = softmax(scores)[:, :, :S] · V_cache + softmax(scores)[:, :, S:] · v_new

and only then writes the new rows into the cache with ``index_copy_``. `Step` (the cpu
program's one graph) reads only the first W rows of each cache (its ``window`` input):
there W and T both vary, so the two blocks' probabilities come from the scores' shared
log-sum-exp rather than from slicing one softmax. Its decoder keeps the caches
``seq_major``, so the first W positions are one contiguous prefix of each buffer, read as
``cache[:W]``: the program exports that as a prefix read of the state
(`edgeport.state_rows.split_state_prefixes`), which the runtime passes as a view and the
cpu backend binds in place, so no window is ever copied (60 gathered windows were, held
at once: bench/README.md, "The cache window without a copy"). The program
exports that write as a row update (`edgeport.state_rows`): the delegate returns
just the new rows and the runtime writes them into the state in place.

A chunk of T prompt tokens that is not full is padded; padded rows come after every
real row, so causality keeps them out of the real rows, and their cache rows land at
positions no later read reaches before a real token overwrites them.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderConfig, RopeScaling
from .quantized import Weight, embedding, linear, reads_norm_before_gamma


# The MLP gate's activation, by `DecoderConfig.activation`: SiLU (Llama, Qwen, Mistral) or
# GELU with the tanh approximation (Gemma's "gelu_pytorch_tanh"; the cpu backend writes
# aten.gelu approximate="tanh" as one TFLite GELU).
ACTIVATIONS = {"silu": F.silu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) * weight over the last dim (computed in fp32, as HF does);
    ``weight`` None: the norm before its gamma."""
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return normed if weight is None else normed * weight


def norm_linear(x: torch.Tensor, gamma: torch.Tensor, eps: float, weight: Weight,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(rms_norm(x, gamma), weight)``; where the weight's outlier split took the
    gamma in (`quantized.OutlierChannels.fold_gamma`), the norm's output before it."""
    folded = reads_norm_before_gamma(weight)
    return linear(rms_norm(x, None if folded else gamma, eps), weight, bias)


def rope_inv_freq(config: DecoderConfig, max_seq_len: int) -> torch.Tensor:
    """The rotary inverse frequencies (one per pair of rotary dims) for a cache of
    ``max_seq_len`` positions, computed in fp32 exactly as Hugging Face does, so the
    exported model's logits match its eager forward.

    LongRoPE: the short factors when the whole cache fits in the pretraining context,
    else the long ones, for every position. Hugging Face switches to the long factors
    only once a sequence grows past that context, which a static cache cannot follow
    (its earlier keys are already rotated), so the choice is made once, at export."""
    dim = config.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    scaling = config.rope_scaling
    if scaling.kind in ("longrope", "factors"):
        long = scaling.uses_long_factors(max_seq_len)
        factors = torch.tensor(scaling.long_factor if long else scaling.short_factor, dtype=torch.float32)
        return 1.0 / (factors * config.rope_theta**exponents)
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    return inv_freq


def _llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1: long wavelengths slowed by ``factor``, short ones kept, smooth in between."""
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class Layer(nn.Module):
    """One decoder layer: attention over the static cache, then the gated MLP (SiLU, or
    Gemma's tanh GELU: `ACTIVATIONS`).

    Weights start uninitialized (`weights.build_decoder` fills them; a prototype that is
    only traced never reads them); the cache starts at zero.
    """

    def __init__(self, config: DecoderConfig, max_seq_len: int, seq_major: bool = False) -> None:
        super().__init__()
        c = config
        d, q_out, kv_out = c.head_dim, c.heads * c.head_dim, c.kv_heads * c.head_dim
        self.config = c
        self.seq_major = seq_major
        self.attn_norm = nn.Parameter(torch.ones(c.hidden_size))
        self.qkv = nn.Parameter(torch.empty(q_out + 2 * kv_out, c.hidden_size))
        self.qkv_bias = nn.Parameter(torch.empty(q_out + 2 * kv_out)) if c.attention_bias else None
        self.q_norm = nn.Parameter(torch.ones(d)) if c.qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(d)) if c.qk_norm else None
        self.o = nn.Parameter(torch.empty(c.hidden_size, q_out))
        self.mlp_norm = nn.Parameter(torch.ones(c.hidden_size))
        self.gate_up = nn.Parameter(torch.empty(2 * c.intermediate_size, c.hidden_size))
        self.down = nn.Parameter(torch.empty(c.hidden_size, c.intermediate_size))
        self.activation = ACTIVATIONS[c.activation]
        cache_shape = (max_seq_len, c.kv_heads, d) if seq_major else (c.kv_heads, max_seq_len, d)
        self.register_buffer("k_cache", torch.zeros(cache_shape))
        self.register_buffer("v_cache", torch.zeros(cache_shape))

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], masks: tuple[torch.Tensor, torch.Tensor | None],
                positions: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """``window`` (W,): the cache positions 0..W-1 to attend over (`Step`, whose
        caches are ``seq_major``), else all of them; the old-cache mask in ``masks`` is as long."""
        c = self.config
        T, d, kv, group = h.shape[0], c.head_dim, c.kv_heads, c.group
        qkv = norm_linear(h, self.attn_norm, c.rms_norm_eps, self.qkv, self.qkv_bias)
        # Slices, not split: unequal parts would be one SPLIT_V, which NeuroPilot cannot take.
        q, k, v = qkv[:, : c.heads * d], qkv[:, c.heads * d : (c.heads + kv) * d], qkv[:, (c.heads + kv) * d :]
        q, k, v = q.view(T, c.heads, d), k.view(T, kv, d), v.view(T, kv, d)
        if self.q_norm is not None:
            q, k = rms_norm(q, self.q_norm, c.rms_norm_eps), rms_norm(k, self.k_norm, c.rms_norm_eps)
        q, k = _rotate(q, rope, c.rotary_dim), _rotate(k, rope, c.rotary_dim)
        q = q.view(T, kv, group, d).permute(1, 2, 0, 3).reshape(kv, group * T, d)  # (kv, group·T, d)
        k_rows, v_rows = k, v  # (T, kv, d)
        k, v = k.transpose(0, 1), v.transpose(0, 1)  # (kv, T, d)

        old_mask, causal = masks
        k_old, v_old = self._cache(window)
        old = torch.bmm(q, k_old.transpose(1, 2)) + old_mask  # (kv, group·T, S or W)
        new = torch.bmm(q, k.transpose(1, 2))  # (kv, group·T, T)
        if causal is not None:
            new = new + causal
        if window is None:
            probs = torch.softmax(torch.cat([old, new], dim=-1), dim=-1)
            S = k_old.shape[1]
            out = torch.bmm(probs[..., :S], v_old) + torch.bmm(probs[..., S:], v)  # (kv, group·T, d)
        else:
            out = _attend_by_blocks(old, new, v_old, v)
        out = out.view(kv, group, T, d).permute(2, 0, 1, 3).reshape(T, c.heads * d)
        if self.seq_major:
            self.k_cache.index_copy_(0, positions, k_rows)
            self.v_cache.index_copy_(0, positions, v_rows)
        else:
            self.k_cache.index_copy_(1, positions, k)
            self.v_cache.index_copy_(1, positions, v)

        h = h + linear(out, self.o)
        gate, up = norm_linear(h, self.mlp_norm, c.rms_norm_eps, self.gate_up).chunk(2, dim=-1)
        return h + linear(self.activation(gate) * up, self.down)

    def _cache(self, window: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The K and V cache rows attention reads, as (kv, S or W, d): a seq-major cache's
        first W positions (a prefix of the buffer) or all of them, else the whole cache."""
        if not self.seq_major:
            return self.k_cache, self.v_cache
        rows = self.k_cache.shape[0] if window is None else window.shape[0]
        return self.k_cache[:rows].transpose(0, 1), self.v_cache[:rows].transpose(0, 1)


def _attend_by_blocks(old: torch.Tensor, new: torch.Tensor, v_old: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax([old | new]) · [v_old; v] without slicing the softmax apart or joining the
    values: each block's probabilities from the scores' shared log-sum-exp. Where both
    blocks' lengths vary (the cache window W, the chunk T) no constant slice splits one
    softmax, and joining the values would copy the window's V rows."""
    scores = torch.cat([old, new], dim=-1)
    top = scores.amax(-1, keepdim=True)
    log_sum = top + torch.log(torch.exp(scores - top).sum(-1, keepdim=True))
    return torch.bmm(torch.exp(old - log_sum), v_old) + torch.bmm(torch.exp(new - log_sum), v)


def _rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], rotary_dim: int) -> torch.Tensor:
    """Rotary embedding in Hugging Face's half-split form over each head's first
    ``rotary_dim`` dims: x·cos + rotate_half(x)·sin, with rotate_half's sign folded into
    the sin table (``signed_sin``). Dims past ``rotary_dim`` (partial rotary, Phi-4-mini)
    meet cos 1 and sin 0 in the tables: x·1 + x·0, exactly x."""
    cos, signed_sin = rope  # (T, 1, d)
    half = rotary_dim // 2
    if rotary_dim == x.shape[-1]:
        swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    else:
        swapped = torch.cat([x[..., half:rotary_dim], x[..., :half], x[..., rotary_dim:]], dim=-1)
    return x * cos + swapped * signed_sin


class Decoder(nn.Module):
    """The whole decoder over a chunk of T tokens at given cache positions."""

    def __init__(self, config: DecoderConfig, max_seq_len: int, seq_major: bool = False) -> None:
        """``seq_major``: caches of shape (max_seq_len, kv_heads, head_dim), whose first
        positions are a prefix of the buffer (what `Step` reads); else (kv_heads,
        max_seq_len, head_dim), what the two-method programs of static shapes read whole."""
        super().__init__()
        c = config
        self.config = c
        self.max_seq_len = max_seq_len
        self.seq_major = seq_major
        self.embed = nn.Parameter(torch.empty(c.vocab_size, c.hidden_size))
        self.lm_head = None if c.tie_embeddings else nn.Parameter(torch.empty(c.vocab_size, c.hidden_size))
        self.layers = nn.ModuleList(Layer(c, max_seq_len, seq_major) for _ in range(c.layers))
        self.norm = nn.Parameter(torch.ones(c.hidden_size))
        self.register_buffer("head_mix", None)  # a rotated, tied decoder's final gamma (rotation.py)
        cos, signed_sin = _rope_tables(c, max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", signed_sin, persistent=False)
        self.register_buffer("cache_index", torch.arange(max_seq_len), persistent=False)
        self.mask_value = float("-inf")  # what masked scores add (static.MASK for calibrated schemes)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, *, any_length: bool = False,
                window: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (1, T), positions (T,) -> hidden states (T, hidden), caches updated.

        ``any_length``: the chunk's causal mask is computed from ``positions`` rather than
        built for one T, so the graph exported runs at any T (a dynamic dim).
        ``window`` (W,): attend over cache positions 0..W-1 only (0, 1, .. W-1, W at least
        the chunk's first position), not the whole cache."""
        T = tokens.shape[-1]
        h = embedding(tokens.reshape(T), self.embed)
        if self.config.scale_embeddings:  # Gemma; an fp32 multiply, as by Hugging Face's fp32 normalizer
            h = h * self.config.hidden_size**0.5
        rope = (F.embedding(positions, self.rope_cos).unsqueeze(1), F.embedding(positions, self.rope_sin).unsqueeze(1))
        # The cache holds the positions before this chunk's first one; later rows are stale.
        cache_index = self.cache_index if window is None else window
        old_mask = torch.where(cache_index < positions[:1], 0.0, self.mask_value).view(1, 1, -1)
        causal = (_causal_mask_of(positions, self.config.group, self.mask_value) if any_length
                  else _causal_mask(T, self.config.group, self.mask_value))
        masks = (old_mask, causal)
        for layer in self.layers:
            h = layer(h, rope, masks, positions, window)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, hidden) -> (N, vocab)."""
        head = self.embed if self.lm_head is None else self.lm_head
        if self.head_mix is None:
            return norm_linear(h, self.norm, self.config.rms_norm_eps, head)
        return linear(F.linear(rms_norm(h, self.norm, self.config.rms_norm_eps), self.head_mix), head)


def _rope_tables(c: DecoderConfig, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin for every cache position, (S, head_dim) each, in fp32 as
    Hugging Face computes them (scaled by LongRoPE's attention factor, else by 1); the
    dims past ``rotary_dim`` get cos 1 and sin 0, so they pass through."""
    inv_freq = rope_inv_freq(c, max_seq_len)
    freqs = torch.arange(max_seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, rotary_dim)
    scale = c.rope_scaling.attention_factor
    cos, sin = emb.cos() * scale, emb.sin() * scale
    half = c.rotary_dim // 2
    signed_sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
    passing = c.head_dim - c.rotary_dim
    if passing:
        cos = torch.cat([cos, torch.ones(max_seq_len, passing)], dim=-1)
        signed_sin = torch.cat([signed_sin, torch.zeros(max_seq_len, passing)], dim=-1)
    return cos, signed_sin


def _causal_mask(T: int, group: int, value: float) -> torch.Tensor | None:
    """Additive mask of the chunk's own rows: row (g, t) sees rows up to t. None for one token."""
    if T == 1:
        return None
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    mask = torch.zeros(T, T).masked_fill(~allowed, value)
    # rows ordered (group, T), as the queries are; a cat, not a repeat: HTP runs a
    # quantized Concat but a Tile only in fp16
    return torch.cat([mask] * group)


def _causal_mask_of(positions: torch.Tensor, group: int, value: float) -> torch.Tensor:
    """`_causal_mask` from the chunk's positions (ascending), for a chunk of any length:
    row (g, t) sees the rows at positions up to its own."""
    query_positions = torch.cat([positions] * group)  # rows ordered (group, T), as the queries are
    return torch.where(positions.view(1, -1) > query_positions.view(-1, 1), value, 0.0)


class Step(nn.Module):
    """step(tokens (1, T), positions (T,), window (W,)) -> logits (1, vocab) of the chunk's
    last token, for any T: a prefill chunk, or one token of decode. One graph for both
    methods, so a backend that runs dynamic dims holds the weights (and the KV cache) once.
    ``positions`` ascend; the last token is the one at the highest position.

    ``window`` is 0, 1, .. W-1: attention reads only the first W cache rows (W at least
    the chunk's first position, the rows filled before it; rows from there to W are
    masked), so a decode step early in a long cache costs what a short cache would. The
    caller rounds W up to a bucket, so the model is resized only when it crosses one."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        if not decoder.seq_major:
            raise ValueError("Step reads a prefix of each cache: build its Decoder with seq_major=True")
        self.decoder = decoder

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        h = self.decoder(tokens, positions, any_length=True, window=window)
        last = (positions == positions.amax(0, keepdim=True)).to(h.dtype).view(-1, 1)  # (T, 1): 1 at the last token
        return self.decoder.logits((h * last).sum(0, keepdim=True))


class Prefill(nn.Module):
    """prefill(tokens (1, T), positions (T,), last (1,)) -> logits (1, vocab) of token ``last``."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        h = self.decoder(tokens, positions)
        return self.decoder.logits(h.index_select(0, last))


class Decode(nn.Module):
    """decode(token (1, 1), position (1,)) -> logits (1, vocab)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.decoder.logits(self.decoder(token, position))
