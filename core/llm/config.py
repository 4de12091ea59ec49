"""The shape of a Llama-family decoder: what the export-friendly forward needs to know.

Read from a Hugging Face ``config.json`` or a GGUF file's metadata (see `loader.py`).
Architectures differ from Llama in a few switches only (Qwen2's q/k/v biases, Qwen3's
per-head q/k norms, Gemma's scaled embeddings, unit-offset norms and GELU, Phi-3's
partial rotary and LongRoPE), so one dataclass with those switches covers them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Architectures (HF ``model_type``) whose layers are exactly the forward in `model.py`.
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched for long contexts: "default" (none),
    "linear" (positions divided by ``factor``), "llama3" (Llama 3.1's smooth
    per-frequency interpolation), "longrope" (Phi-3: each frequency divided by its own
    factor, ``short_factor`` for contexts up to ``original_max_position``, ``long_factor``
    beyond; cos and sin scaled by ``attention_factor``) or "factors" (each frequency
    divided by its own factor in ``short_factor``, at every length: how a Llama 3.1+ GGUF
    file stores its "llama3" scaling, as the tensor ``rope_freqs``)."""

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    short_factor: tuple[float, ...] = ()  # longrope: one per rotary frequency
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0  # longrope: multiplies the cos and sin tables

    def uses_long_factors(self, max_seq_len: int) -> bool:
        """LongRoPE: whether a cache of ``max_seq_len`` positions takes the long factors
        (for every position: a static cache cannot switch once its keys are rotated)."""
        return self.kind == "longrope" and max_seq_len > self.original_max_position

    def describe(self, max_seq_len: int) -> str:
        """The scaling in a few words, with the factors a LongRoPE cache takes."""
        if self.kind != "longrope":
            return {"default": "", "factors": "per-frequency factors"}.get(self.kind, f"{self.kind} scaling")
        if self.uses_long_factors(max_seq_len):
            return f"LongRoPE long factors (cache {max_seq_len} > {self.original_max_position})"
        return f"LongRoPE short factors (cache {max_seq_len} <= {self.original_max_position})"


@dataclass(frozen=True)
class DecoderConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    tie_embeddings: bool = True
    attention_bias: bool = False  # Qwen2: biases on the q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rotary
    max_position_embeddings: int = 2048
    sliding_window: int | None = None  # Mistral, Phi-3: attention sees at most this many positions back
    activation: str = "silu"  # the MLP's gate: "silu", or "gelu_tanh" (Gemma: GELU, tanh approximation)
    scale_embeddings: bool = False  # Gemma: embedding rows times sqrt(hidden_size); the tied head reads them unscaled
    norm_adds_one: bool = False  # Gemma: RMSNorm weights are stored as gamma - 1 (weights.py adds the 1 at load)
    partial_rotary_factor: float = 1.0  # Phi-4-mini 0.75: rotary on each head's first rotary_dim dims only

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads

    @property
    def rotary_dim(self) -> int:
        """The leading dims of each head that rotary embedding turns (all of them unless
        ``partial_rotary_factor`` < 1); the rest pass through unchanged."""
        return int(self.head_dim * self.partial_rotary_factor)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DecoderConfig:
        """The inverse of `to_json` (a program's ``metadata["llm"]["config"]``); fields a
        program written before them lacks take their defaults."""
        rope = dict(data.get("rope_scaling") or {})
        for name in ("short_factor", "long_factor"):
            rope[name] = tuple(rope.get(name, ()))
        return cls(**{**data, "rope_scaling": RopeScaling(**rope)})

    def describe(self, max_seq_len: int) -> str:
        """One line for people: the shape, and what the export chose that a reader may
        need to know (the rotary dims, the rope scaling, the window)."""
        parts = [self.architecture, f"{self.layers} layers", f"hidden {self.hidden_size}",
                 f"{self.heads} heads ({self.kv_heads} kv) of {self.head_dim}", f"vocab {self.vocab_size:,}",
                 "tied head" if self.tie_embeddings else "own head"]
        if self.rotary_dim != self.head_dim:
            parts.append(f"rotary on {self.rotary_dim} of {self.head_dim} dims")
        if scaling := self.rope_scaling.describe(max_seq_len):
            parts.append(scaling)
        if self.sliding_window:
            parts.append(f"window {self.sliding_window}")
        return ", ".join(parts)
