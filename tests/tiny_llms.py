"""Small random Llama-family models saved as Hugging Face directories, with a word-level
tokenizer ("w5" is token 5): what the LLM tests and the torch-free device tests export.
Needs transformers (the compile side's `llm` extra)."""

from __future__ import annotations

import json

import torch

VOCAB = 96

ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    # no padding row: token 0 (what the calibration text's words all encode to here) would embed as zeros
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 32, "pad_token_id": None}),
    # Phi-4-mini's shape of rope: rotary on 12 of each head's 16 dims, LongRoPE (6 factors
    # each) with a 32-position pretraining context, so max_seq_len 32 takes the short
    # factors and 64 the long ones; attention factor sqrt(1 + ln 2 / ln 32)
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {
        "partial_rotary_factor": 0.75, "original_max_position_embeddings": 32, "sliding_window": 64,
        "pad_token_id": None, "eos_token_id": 1,  # Phi-3's defaults (32000) are past this vocabulary
        "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.7, 2.2, 3.0],
                         "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 8.0]}}),
}


def tiny_model_dir(root, arch: str, **overrides):
    """A small random model of ``arch`` saved as a Hugging Face directory under
    ``root``, and the model; ``overrides`` replace entries of its config."""
    config_cls, model_cls, extra = ARCHS[arch]
    import transformers

    config = getattr(transformers, config_cls)(**{
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "tie_word_embeddings": arch != "llama", **extra, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # norms away from 1 and visible biases, so a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.uniform_(0.5, 1.5)
    path = root / arch
    model.save_pretrained(path, safe_serialization=True)
    (path / "tokenizer.json").write_text(_word_tokenizer())
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    return path, model


def _word_tokenizer() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer.to_str()
