"""The shape of a Llama-family decoder: what the export-friendly forward needs to know.

Read from a Hugging Face ``config.json`` or a GGUF file's metadata (see `loader.py`).
Architectures differ from Llama in a few switches only (Qwen2's q/k/v biases, Qwen3's
per-head q/k norms, Gemma's scaled embeddings, unit-offset norms and GELU), so one
dataclass with those switches covers them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Architectures (HF ``model_type``) whose layers are exactly the forward in `model.py`.
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma")


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched for long contexts: "default" (none),
    "linear" (positions divided by ``factor``) or "llama3" (Llama 3.1's smooth
    per-frequency interpolation)."""

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


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
    sliding_window: int | None = None  # Mistral: attention sees at most this many positions back
    activation: str = "silu"  # the MLP's gate: "silu", or "gelu_tanh" (Gemma: GELU, tanh approximation)
    scale_embeddings: bool = False  # Gemma: embedding rows times sqrt(hidden_size); the tied head reads them unscaled
    norm_adds_one: bool = False  # Gemma: RMSNorm weights are stored as gamma - 1 (weights.py adds the 1 at load)

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.heads // self.kv_heads

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
