"""The model zoo: one tiny Hugging Face `transformers` model per architecture family,
built from a config with random weights (nothing is downloaded), wrapped so that
``forward`` takes tensors and returns the last hidden state.

These are models nobody here wrote: the zoo test (test_zoo.py) exports each to every
backend that compiles here and holds it to eager PyTorch and a delegated-share floor.
Sizes are the smallest that keep each family's structure (two layers or stages, at
least two heads), so the whole zoo exports in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

VOCAB = 100
TOKENS = 8


class LastHidden(nn.Module):
    """``model(**{input_name: x}).last_hidden_state``: one tensor in, one out."""

    def __init__(self, model: nn.Module, input_name: str):
        super().__init__()
        self.model = model
        self.input_name = input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.input_name: x}).last_hidden_state


class LastHiddenMasked(nn.Module):
    """``model(input_ids, attention_mask[, token_type_ids]).last_hidden_state``: an
    encoder called as users call it, with a padding mask (and segment ids)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, token_types: torch.Tensor | None = None) -> torch.Tensor:
        segments = {} if token_types is None else dict(token_type_ids=token_types)
        return self.model(input_ids=ids, attention_mask=mask, **segments).last_hidden_state


@dataclass(frozen=True)
class Family:
    """One architecture: how to build its tiny model and an example input."""

    name: str
    build: Callable[[], nn.Module]  # the transformers model, in eval mode
    input_name: str
    example: Callable[[], torch.Tensor]

    def module(self) -> nn.Module:
        torch.manual_seed(0)
        model = self.build().eval()
        _visible_weights(model)
        return LastHidden(model, self.input_name).eval()


def _visible_weights(model: nn.Module) -> None:
    """Weights at a scale that keeps activations of order one through every layer.

    transformers initializes for training (std 0.02, zero biases, unit norms): in a deep
    conv stack like MobileViT's, activations then vanish to exact zeros, and an output of
    zeros would match any backend. Matrices get std 1/sqrt(fan-in); norm scales and biases
    get values away from 1 and 0, so a dropped scale or bias shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=generator) + 0.5)


@dataclass(frozen=True)
class MaskedFamily:
    """A BERT-style encoder called with an attention mask: two sequences, the second
    padded, and segment ids when the family takes them."""

    name: str
    build: Callable[[], nn.Module]
    token_types: bool

    def module(self) -> nn.Module:
        torch.manual_seed(0)
        model = self.build().eval()
        _visible_weights(model)
        return LastHiddenMasked(model).eval()

    def example(self) -> tuple[torch.Tensor, ...]:
        ids = torch.randint(3, VOCAB, (2, TOKENS), generator=torch.Generator().manual_seed(0))
        mask = torch.ones(2, TOKENS, dtype=torch.long)
        mask[1, TOKENS - 3:] = 0
        segments = torch.zeros(2, TOKENS, dtype=torch.long)
        segments[:, TOKENS // 2:] = 1
        return (ids, mask, segments) if self.token_types else (ids, mask)


def _tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, TOKENS), generator=torch.Generator().manual_seed(0))


def _image(size: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _transformers():
    import transformers

    return transformers


_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_DECODER = dict(_TEXT, vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
_VISION = dict(_TEXT, image_size=32, patch_size=8)


def _bert():
    t = _transformers()
    return t.BertModel(t.BertConfig(vocab_size=VOCAB, max_position_embeddings=64, **_TEXT), add_pooling_layer=False)


def _distilbert():
    t = _transformers()
    return t.DistilBertModel(t.DistilBertConfig(vocab_size=VOCAB, max_position_embeddings=64, dim=32, n_layers=2,
                                                n_heads=2, hidden_dim=64))


def _albert():
    t = _transformers()
    return t.AlbertModel(t.AlbertConfig(vocab_size=VOCAB, max_position_embeddings=64, embedding_size=16, **_TEXT),
                         add_pooling_layer=False)


def _gpt2():
    t = _transformers()
    return t.GPT2Model(t.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                                    bos_token_id=1, eos_token_id=2, use_cache=False))


def _llama():
    t = _transformers()
    return t.LlamaModel(t.LlamaConfig(**_DECODER))


def _qwen2():
    t = _transformers()
    return t.Qwen2Model(t.Qwen2Config(**_DECODER))


def _t5_encoder():
    t = _transformers()
    return t.T5EncoderModel(t.T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2))


def _vit():
    t = _transformers()
    return t.ViTModel(t.ViTConfig(**_VISION), add_pooling_layer=False)


def _swin():
    t = _transformers()
    return t.SwinModel(t.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                    window_size=4), add_pooling_layer=False)


def _convnext():
    t = _transformers()
    return t.ConvNextModel(t.ConvNextConfig(num_channels=3, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2,
                                            image_size=32))


def _mobilevit():
    t = _transformers()
    return t.MobileViTModel(t.MobileViTConfig(image_size=64, hidden_sizes=[16, 24, 32],
                                              neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2),
                            expand_output=False)


def _whisper_encoder():
    t = _transformers()
    config = t.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                             num_mel_bins=16, max_source_positions=16, decoder_layers=1, decoder_attention_heads=2)
    return t.WhisperModel(config).get_encoder()


def _mel() -> torch.Tensor:
    return torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0))  # 2 x max_source_positions frames


def _wav2vec2():
    t = _transformers()
    return t.Wav2Vec2Model(t.Wav2Vec2Config(conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, **_TEXT))


def _audio() -> torch.Tensor:
    return torch.randn(1, 400, generator=torch.Generator().manual_seed(0))


def _clip_vision():
    t = _transformers()
    return t.CLIPVisionModel(t.CLIPVisionConfig(**_VISION))


def _clip_text():
    t = _transformers()
    return t.CLIPTextModel(t.CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1,
                                                    eos_token_id=2, **_TEXT))


FAMILIES = {f.name: f for f in [
    Family("bert", _bert, "input_ids", _tokens),
    Family("gpt2", _gpt2, "input_ids", _tokens),
    Family("llama", _llama, "input_ids", _tokens),
    Family("qwen2", _qwen2, "input_ids", _tokens),
    Family("t5_encoder", _t5_encoder, "input_ids", _tokens),
    Family("vit", _vit, "pixel_values", _image),
    Family("swin", _swin, "pixel_values", _image),
    Family("convnext", _convnext, "pixel_values", _image),
    Family("mobilevit", _mobilevit, "pixel_values", lambda: _image(64)),
    Family("whisper_encoder", _whisper_encoder, "input_features", _mel),
    Family("wav2vec2", _wav2vec2, "input_values", _audio),
    Family("clip_vision", _clip_vision, "pixel_values", _image),
    Family("clip_text", _clip_text, "input_ids", _tokens),
]}

# The BERT family as users call it, with a padding mask (issue 13: one partition on cpu
# and mediatek after the embedding lookup), and GPT-2 with its padding mask.
MASKED_FAMILIES = {f.name: f for f in [
    MaskedFamily("bert_masked", _bert, token_types=True),
    MaskedFamily("distilbert_masked", _distilbert, token_types=False),
    MaskedFamily("albert_masked", _albert, token_types=True),
    # A decoder's mask too: GPT-2 ANDs the padding mask with its causal one.
    MaskedFamily("gpt2_masked", _gpt2, token_types=False),
]}
