"""Filling a `Decoder` from weights named the Hugging Face way (``model.layers.0.self_attn.q_proj.weight``).

Both loaders (GGUF and HF directory) produce that naming, so this is the one place
that knows how the export-friendly layout differs from it: q/k/v and gate/up are
fused, and attention's 1/sqrt(head_dim) is folded into the query weights (a power of
two for the usual head sizes, so the scores come out bit-identical).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from ..errors import EdgeportError
from .config import DecoderConfig
from .model import Decoder

Weights = Mapping[str, torch.Tensor]


def build_decoder(config: DecoderConfig, weights: Weights, max_seq_len: int) -> Decoder:
    """A `Decoder` holding ``weights`` (fp32), with an empty cache of ``max_seq_len`` positions."""
    get = _getter(weights)
    decoder = Decoder(config, max_seq_len)
    scale = 1.0 / math.sqrt(config.head_dim)
    with torch.no_grad():
        decoder.embed.copy_(get("model.embed_tokens.weight"))
        if decoder.lm_head is not None:
            decoder.lm_head.copy_(get("lm_head.weight"))
        decoder.norm.copy_(get("model.norm.weight"))
        for i, layer in enumerate(decoder.layers):
            p = f"model.layers.{i}."
            q_scale = 1.0 if config.qk_norm else scale  # with q_norm, the scale goes into its weight
            layer.attn_norm.copy_(get(p + "input_layernorm.weight"))
            layer.qkv.copy_(torch.cat([get(p + "self_attn.q_proj.weight") * q_scale,
                                       get(p + "self_attn.k_proj.weight"), get(p + "self_attn.v_proj.weight")]))
            if layer.qkv_bias is not None:
                layer.qkv_bias.copy_(torch.cat([get(p + "self_attn.q_proj.bias") * q_scale,
                                                get(p + "self_attn.k_proj.bias"), get(p + "self_attn.v_proj.bias")]))
            if layer.q_norm is not None:
                layer.q_norm.copy_(get(p + "self_attn.q_norm.weight") * scale)
                layer.k_norm.copy_(get(p + "self_attn.k_norm.weight"))
            layer.o.copy_(get(p + "self_attn.o_proj.weight"))
            layer.mlp_norm.copy_(get(p + "post_attention_layernorm.weight"))
            layer.gate_up.copy_(torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]))
            layer.down.copy_(get(p + "mlp.down_proj.weight"))
    return decoder.eval()


def _getter(weights: Weights) -> Callable[[str], torch.Tensor]:
    def get(name: str) -> torch.Tensor:
        if name not in weights:
            raise EdgeportError(
                f"the model has no weight {name!r}",
                hint="edgeport.llm reads Llama-family models (llama, mistral, qwen2, qwen3) with Hugging Face weight names",
            )
        return weights[name].float()

    return get
