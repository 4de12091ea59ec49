"""Filling a `Decoder` from weights named the Hugging Face way (``model.layers.0.self_attn.q_proj.weight``).

Both loaders (GGUF and HF directory) produce that naming, so this is the one place
that knows how the export-friendly layout differs from it: q/k/v and gate/up are
fused (Phi-3 stores them fused already, in the same row order), attention's
1/sqrt(head_dim) is folded into the query weights (a power of two for the usual head
sizes, so the scores come out bit-identical), and Gemma's norm weights (stored as
gamma - 1) become the gamma itself, 1 + weight in fp32 as Hugging Face computes it, so
every architecture runs the same RMSNorm.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from ..errors import EdgeportError
from .config import ARCHITECTURES, DecoderConfig
from .model import Decoder

Weights = Mapping[str, torch.Tensor]


def build_decoder(config: DecoderConfig, weights: Weights, max_seq_len: int, seq_major: bool = False) -> Decoder:
    """A `Decoder` holding ``weights`` (fp32), with an empty cache of ``max_seq_len``
    positions (``seq_major`` as `Decoder` takes it)."""
    get = _getter(weights)
    norm = (lambda name: get(name) + 1.0) if config.norm_adds_one else get  # an RMSNorm's gamma
    decoder = Decoder(config, max_seq_len, seq_major)
    scale = 1.0 / math.sqrt(config.head_dim)
    q_scale = 1.0 if config.qk_norm else scale  # with q_norm, the scale goes into its weight
    with torch.no_grad():
        fill(decoder.embed, get("model.embed_tokens.weight"))
        if decoder.lm_head is not None:
            fill(decoder.lm_head, get("lm_head.weight"))
        fill(decoder.norm, norm("model.norm.weight"))
        for i, layer in enumerate(decoder.layers):
            p = f"model.layers.{i}."
            attn = p + "self_attn."
            fill(layer.attn_norm, norm(p + "input_layernorm.weight"))
            q, k, v = _qkv_rows(weights, get, attn, config)
            fill(layer.qkv, torch.cat([q * q_scale, k, v]))
            if layer.qkv_bias is not None:
                fill(layer.qkv_bias, torch.cat([get(attn + "q_proj.bias") * q_scale, get(attn + "k_proj.bias"),
                                                get(attn + "v_proj.bias")]))
            if layer.q_norm is not None:
                fill(layer.q_norm, norm(attn + "q_norm.weight") * scale)
                fill(layer.k_norm, norm(attn + "k_norm.weight"))
            fill(layer.o, get(attn + "o_proj.weight"))
            fill(layer.mlp_norm, norm(p + "post_attention_layernorm.weight"))
            if p + "mlp.gate_up_proj.weight" in weights:  # Phi-3: fused already, gate rows first
                fill(layer.gate_up, get(p + "mlp.gate_up_proj.weight"))
            else:
                fill(layer.gate_up, torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]))
            fill(layer.down, get(p + "mlp.down_proj.weight"))
    return decoder.eval()


def _qkv_rows(weights: Weights, get: Callable[[str], torch.Tensor], attn: str,
              config: DecoderConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k and v projection weights of one layer: three weights, or Phi-3's one
    ``qkv_proj`` (q, k, v rows in that order) cut apart."""
    if attn + "qkv_proj.weight" not in weights:
        return get(attn + "q_proj.weight"), get(attn + "k_proj.weight"), get(attn + "v_proj.weight")
    kv_rows = config.kv_heads * config.head_dim
    fused = get(attn + "qkv_proj.weight")
    if fused.shape[0] != config.heads * config.head_dim + 2 * kv_rows:
        raise EdgeportError(
            f"{attn}qkv_proj.weight has {fused.shape[0]} rows, not the {config.heads * config.head_dim + 2 * kv_rows} "
            f"of {config.heads} query and 2 x {config.kv_heads} key/value heads of {config.head_dim}",
            hint="check that config.json describes these weights",
        )
    q, k, v = fused.split([config.heads * config.head_dim, kv_rows, kv_rows])
    return q, k, v


def fill(parameter: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Make ``value`` the parameter's data, uncopied (weights are large); shapes must agree."""
    if value.shape != parameter.shape:
        raise EdgeportError(
            f"a weight of shape {tuple(value.shape)} does not fit the model's {tuple(parameter.shape)}",
            hint="check that config.json (or the GGUF metadata) describes these weights",
        )
    parameter.data = value


def _getter(weights: Weights) -> Callable[[str], torch.Tensor]:
    def get(name: str) -> torch.Tensor:
        if name not in weights:
            raise EdgeportError(
                f"the model has no weight {name!r}",
                hint=f"edgeport.llm reads Llama-family models ({', '.join(ARCHITECTURES)}) "
                     "with Hugging Face weight names",
            )
        return weights[name].float().contiguous()

    return get
