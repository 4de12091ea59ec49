"""Loading an LLM for export: a GGUF file or a local Hugging Face model directory, offline.

Both give a `LoadedModel`: the decoder's shape (`DecoderConfig`), its weights in fp32
under Hugging Face names, and what generation needs (the tokenizer as ``tokenizer.json``
text, the chat template, stop tokens).

- GGUF (llama, qwen2, qwen3, gemma and phi3 architectures): shape and weights are read by
  `gguf_file.py` and dequantized by the ``gguf`` package's numpy kernels, about 1.5 s
  for SmolLM2 where building the transformers model takes 20. For the llama
  architecture, llama.cpp stores q/k projection rows interleaved for its rotary form;
  they are put back in Hugging Face's half-split order (the others keep Hugging Face's
  order: llama.cpp's converter permutes llama's rows only). A gemma file's norms are
  stored as 1 + weight already; a phi3 file keeps q/k/v and gate/up fused and, for
  LongRoPE, its per-frequency factors as tensors (``rope_factors_short/long``). The
  tokenizer is converted by transformers' GGUF support, so it encodes as
  ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` does.
- Hugging Face directory (llama, mistral, qwen2, qwen3, gemma, phi3): ``config.json``,
  ``*.safetensors``, ``tokenizer.json``, the chat template and ``generation_config.json``.
  What an architecture changes in the Llama forward is read into `DecoderConfig`'s
  switches (`hf_config`). Phi-3 (also Phi-3.5-mini and Phi-4-mini) stores q/k/v and
  gate/up fused already (`weights.build_decoder` takes them as they are), may turn only
  part of each head (``partial_rotary_factor``) and may stretch its rotary frequencies
  by LongRoPE, whose short or long factors `model.rope_inv_freq` picks from the cache
  length.

Nothing is ever downloaded: ``HF_HUB_OFFLINE`` is set before transformers is imported.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import EdgeportError
from .config import ARCHITECTURES, DecoderConfig, RopeScaling
from .gguf_file import GgufFormatError, read_gguf


@dataclass(frozen=True)
class LoadedModel:
    """An LLM ready to build a `Decoder` from, and everything needed to talk to it."""

    name: str
    config: DecoderConfig
    weights: dict[str, torch.Tensor]  # Hugging Face names, fp32
    tokenizer_json: str
    chat_template: str | None
    stop_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    add_bos_token: bool = False  # prepend BOS to every encoded prompt (Llama 2 style)
    generation: dict[str, Any] = field(default_factory=dict)  # sampling defaults from generation_config.json


class ModelLoadError(EdgeportError):
    """The model path cannot be read as an LLM edgeport supports."""


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a ``.gguf`` file or a local Hugging Face model directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise ModelLoadError(f"a model is the path of a .gguf file or a Hugging Face directory, got "
                             f"{type(path).__name__}")
    p = Path(path)
    ggufs = sorted(p.glob("*.gguf")) if p.is_dir() else []
    if p.is_dir() and (p / "config.json").is_file():
        return _reading(p, load_hf_dir)
    if p.is_file() and p.suffix == ".gguf" or len(ggufs) == 1:
        return _reading(p if p.is_file() else ggufs[0], load_gguf)
    raise ModelLoadError(
        f"{path} is neither a .gguf file nor a Hugging Face model directory (with config.json)",
        hint="pass a .gguf file, or a local directory holding config.json, *.safetensors and tokenizer.json",
    )


def _reading(path: Path, load: Callable[[Path], LoadedModel]) -> LoadedModel:
    """``load(path)``, where a file the gguf, safetensors, tokenizers or transformers
    libraries cannot read (cut short, no tokenizer) is one `ModelLoadError`."""
    try:
        return load(path)
    except ModelLoadError:
        raise
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        needs = "; a Hugging Face directory needs config.json, *.safetensors and tokenizer.json" if path.is_dir() else ""
        raise ModelLoadError(f"cannot read {path}: {type(exc).__name__}: {lines[0] if lines else ''}",
                             hint=f"check the download is whole{needs}") from exc


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# -- GGUF ---------------------------------------------------------------------------------

# GGUF tensor names (llama.cpp) -> Hugging Face names, per layer and global.
_GGUF_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm",  # qwen3
    "attn_k_norm": "self_attn.k_norm",
}
_GGUF_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# The GGUF architectures edgeport reads, each with its layer tensors' Hugging Face names.
# Phi-3 keeps q/k/v and gate/up fused, as its Hugging Face weights do. Which other
# switches a file uses (q/k/v biases, q/k norms) is read from the tensors it holds.
GGUF_LAYERS = {
    "llama": _GGUF_LAYER,
    "qwen2": _GGUF_LAYER,
    "qwen3": _GGUF_LAYER,
    "gemma": _GGUF_LAYER,
    "phi3": {**_GGUF_LAYER, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
GGUF_ARCHITECTURES = tuple(GGUF_LAYERS)


def load_gguf(path: Path) -> LoadedModel:
    try:
        import gguf.quants  # noqa: F401 - dequantizes the weights (`_dequantized`)
    except ImportError as exc:
        raise ModelLoadError(f"reading GGUF needs the gguf package ({exc})", hint="pip install 'edgeport[llm]'") from None
    try:
        contents = read_gguf(path)
    except (GgufFormatError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {exc}") from None
    meta, tensors = contents.metadata, contents.tensors
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(
            f"{path.name}: GGUF architecture {arch!r} is not supported "
            f"(edgeport reads {', '.join(GGUF_ARCHITECTURES)} GGUF files)",
            hint="export it from its Hugging Face directory instead (config.json + safetensors)" if arch in ARCHITECTURES
            else f"edgeport reads {', '.join(ARCHITECTURES)} models, from GGUF or Hugging Face directories",
        )
    if "token_embd.weight" not in tensors:
        raise ModelLoadError(f"{path.name} has no token embedding (token_embd.weight)")
    config = _gguf_config(meta, tensors)
    weights = {}
    for tensor in tensors.values():
        hf = _gguf_name(tensor.name, GGUF_LAYERS[arch])
        if hf is None:
            continue
        values = _dequantized(tensor)
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            values = _unpermute_rotary(values, config.heads)
        elif arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            values = _unpermute_rotary(values, config.kv_heads)
        weights[hf] = torch.from_numpy(np.array(values, dtype=np.float32))  # owned and writable
        _check_finite(weights[hf], tensor.name, path)
    tokenizer, special = _gguf_tokenizer(path)
    if special.get("chat_template"):
        check_chat_template(special["chat_template"], f"{path.name} (tokenizer.chat_template)")
    return LoadedModel(
        name=str(meta.get("general.name") or path.stem),
        config=config,
        weights=weights,
        tokenizer_json=tokenizer,
        chat_template=special.get("chat_template"),
        stop_token_ids=_ids(meta.get("tokenizer.ggml.eos_token_id")),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        add_bos_token=bool(special.get("add_bos_token", False)),
    )


def _check_finite(values: torch.Tensor, name: str, path: Path) -> None:
    """Refuse a tensor holding NaN or infinity (a damaged download, a diverged training
    run): the export went through, and every logit came out NaN, so generation picked
    token 0 forever without a word."""
    if not values.is_floating_point():
        return
    # numpy's isfinite: torch's took 5 s of SmolLM2's 40 s export, numpy's 0.2 (bfloat16 has no numpy twin)
    finite = np.isfinite((values.float() if values.dtype == torch.bfloat16 else values).numpy())
    if not finite.all():
        bad = values.numel() - int(finite.sum())
        raise ModelLoadError(f"{path.name}: tensor {name} holds {bad} NaN or infinite value(s) of {values.numel()}",
                             hint="the weights are damaged: download or convert the model again")


def check_chat_template(template: str, source: str) -> None:
    """Refuse a chat template that does not compile, naming where it came from: it was
    stored as it was, every chat then failed, and re-exporting (what the error said to
    do) stored it again."""
    from jinja2 import TemplateSyntaxError

    from .chat_template import compile_template

    try:
        compile_template(template)
    except TemplateSyntaxError as exc:
        raise ModelLoadError(f"the chat template in {source} does not compile: line {exc.lineno}: {exc.message}",
                             hint="fix the template there, then export again") from None


def _gguf_config(meta: dict[str, Any], tensors: dict[str, Any]) -> DecoderConfig:
    """The decoder's shape from the metadata under the file's architecture prefix
    (``qwen2.block_count``...), and its switches from the architecture and the tensors
    it holds."""
    arch = meta["general.architecture"]

    def get(key: str) -> Any:
        if f"{arch}.{key}" not in meta:
            raise ModelLoadError(f"the GGUF file lacks {arch}.{key}")
        return meta[f"{arch}.{key}"]

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    rotary_dims = meta.get(f"{arch}.rope.dimension_count")
    # The head size: key_length where llama.cpp wrote it (a config's own head_dim), else
    # the rotary dims where heads rotate whole (all but Phi-3), else hidden / heads.
    whole_heads_rotary = None if arch == "phi3" else rotary_dims
    head_dim = int(meta.get(f"{arch}.attention.key_length") or whole_heads_rotary or hidden // heads)
    rotary_dims = int(rotary_dims or head_dim)
    if rotary_dims != head_dim and arch != "phi3":
        raise ModelLoadError(f"the GGUF file rotates {rotary_dims} of each head's {head_dim} dimensions; "
                             f"edgeport reads a {arch} file that rotates whole heads")
    config = DecoderConfig(
        architecture=arch,
        vocab_size=tensors["token_embd.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        layers=int(get("block_count")),
        heads=heads,
        kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=_gguf_rope_scaling(meta, tensors),
        tie_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        sliding_window=int(meta.get(f"{arch}.attention.sliding_window") or 0) or None,  # Phi-3; 0: none (Phi-4)
        partial_rotary_factor=rotary_dims / head_dim,  # Phi-4-mini's 0.75
        # Gemma: llama.cpp's converter stores each norm as 1 + weight already (norm_adds_one stays off)
        activation="gelu_tanh" if arch == "gemma" else "silu",
        scale_embeddings=arch == "gemma",
    )
    if config.rotary_dim != rotary_dims:
        raise ModelLoadError(f"the GGUF file's {rotary_dims} rotary dimensions of {head_dim} are not a fraction "
                             "edgeport can hold")
    _check_rotary(config)
    return config


def _gguf_rope_scaling(meta: dict[str, Any], tensors: dict[str, Any]) -> RopeScaling:
    """Linear scaling from the metadata; Phi-3's LongRoPE, whose per-frequency factors
    llama.cpp stores as the tensors ``rope_factors_short`` / ``rope_factors_long``; or
    Llama 3.1's scaling, which llama.cpp's converter stores as one factor per frequency
    (the tensor ``rope_freqs``: 1 for short wavelengths, ``factor`` for long ones, the
    smooth blend between)."""
    arch = meta["general.architecture"]
    if "rope_freqs.weight" in tensors:
        factors = tuple(float(f) for f in _dequantized(tensors["rope_freqs.weight"]))
        return RopeScaling("factors", short_factor=factors)
    if "rope_factors_long.weight" in tensors:
        original = int(meta[f"{arch}.rope.scaling.original_context_length"])
        factors = {name: tuple(float(f) for f in _dequantized(tensors[f"rope_factors_{name}.weight"]))
                   for name in ("short", "long")}
        return RopeScaling(
            "longrope",
            factor=int(meta.get(f"{arch}.context_length", original)) / original,
            original_max_position=original,
            short_factor=factors["short"],
            long_factor=factors["long"],
            attention_factor=float(meta.get(f"{arch}.rope.scaling.attn_factor", 1.0)),
        )
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind == "linear":
        return RopeScaling("linear", float(meta[f"{arch}.rope.scaling.factor"]))
    if kind not in ("none", None):
        raise ModelLoadError(f"rope scaling {kind!r} of this GGUF file is not supported")
    return RopeScaling()


def _dequantized(tensor: Any) -> np.ndarray:
    """A GGUF tensor's values as float32, in its shape (the ``gguf`` package's kernels).
    Its bytes run to the next tensor's: a tensor whose size is not a multiple of the
    file's alignment (a few rope factors, say) is followed by padding, left out here."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    kind = GGMLQuantizationType(tensor.ggml_type)
    block, block_bytes = GGML_QUANT_SIZES[kind]
    size = int(np.prod(tensor.shape)) // block * block_bytes
    values = dequantize(tensor.data[:size], kind).astype(np.float32, copy=False)
    return values.reshape(tensor.shape)


def _gguf_name(name: str, layer_names: dict[str, str]) -> str | None:
    stem, _, kind = name.rpartition(".")
    if stem.startswith("blk."):
        _, index, part = stem.split(".", 2)
        hf = layer_names.get(part)
        return f"model.layers.{index}.{hf}.{kind}" if hf else None
    hf = _GGUF_GLOBAL.get(stem)
    return f"{hf}.{kind}" if hf else None


def _unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp interleaves each head's rotary pairs (rows 0,d/2,1,d/2+1,...); Hugging
    Face keeps the two halves apart. Undo llama.cpp's permutation of the rows."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tokenizer(path: Path) -> tuple[str, dict[str, Any]]:
    """tokenizer.json text and the tokenizer config (chat template, add_bos_token), as
    transformers converts a GGUF vocabulary: directly through its GGUF tokenizer module
    (half the time of AutoTokenizer), or AutoTokenizer where that module differs."""
    _offline()
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer
    except ImportError:
        return _gguf_tokenizer_auto(path)
    architecture, tokenizer, config = get_gguf_tokenizer(str(path))
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer)
    return backend.to_str(), config


def _gguf_tokenizer_auto(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ModelLoadError(f"reading a GGUF tokenizer needs transformers ({exc})", hint="pip install 'edgeport[llm]'") from None
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return tokenizer.backend_tokenizer.to_str(), {"chat_template": template,
                                                  "add_bos_token": getattr(tokenizer, "add_bos_token", False)}


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


# -- Hugging Face directory ----------------------------------------------------------------


def load_hf_dir(path: Path) -> LoadedModel:
    raw = json.loads((path / "config.json").read_text())
    config = hf_config(raw)
    weights = _safetensors(path)
    if not config.tie_embeddings and "lm_head.weight" not in weights:
        config = DecoderConfig(**{**config.__dict__, "tie_embeddings": True})
    tokenizer_json, chat_template, special = _hf_tokenizer(path)
    generation = _read_json(path / "generation_config.json")
    stops = _ids(generation.get("eos_token_id")) or _ids(raw.get("eos_token_id")) or _ids(special.get("eos_token_id"))
    bos = generation.get("bos_token_id", raw.get("bos_token_id"))
    sampling = {k: generation[k] for k in ("temperature", "top_p", "top_k", "do_sample") if k in generation}
    return LoadedModel(
        name=path.name,
        config=config,
        weights=weights,
        tokenizer_json=tokenizer_json,
        chat_template=chat_template,
        stop_token_ids=stops,
        bos_token_id=None if bos is None else int(bos),
        add_bos_token=bool(special.get("add_bos_token", False)),
        generation=sampling,
    )


def hf_config(raw: dict[str, Any]) -> DecoderConfig:
    """A `DecoderConfig` from a Hugging Face ``config.json``, read as transformers 5.23
    reads it: the shape, and the switches by architecture (Qwen2's q/k/v biases, Qwen3's
    q/k norms, Mistral's and Phi-3's sliding window, which masks unless
    ``use_sliding_window`` is false, Gemma's embeddings scaled by sqrt(hidden_size),
    norms of 1 + weight and tanh GELU; Gemma's head_dim is its own, not hidden_size /
    heads; Phi-3's partial rotary and LongRoPE, from ``rope_parameters`` or the older
    ``rope_scaling``)."""
    kind = raw.get("model_type")
    if kind not in ARCHITECTURES:
        raise ModelLoadError(
            f"model type {kind!r} is not supported (edgeport.llm reads {', '.join(ARCHITECTURES)})",
        )
    if raw.get("use_bidirectional_attention"):
        raise ModelLoadError(
            f"this {kind} model attends bidirectionally (use_bidirectional_attention: an encoder, such as an "
            "embedding model), not causally",
            hint="edgeport llm export takes causal decoders that generate text",
        )
    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
    # Mistral and Phi-3 mask by their window whenever it is set (transformers 5.23)
    window = raw.get("sliding_window") if raw.get("use_sliding_window", kind in ("mistral", "phi3")) else None
    config = DecoderConfig(
        architecture=kind,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        layers=int(raw["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=_rope_scaling(rope, raw),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=kind == "qwen2" or bool(raw.get("attention_bias", False)),
        qk_norm=kind == "qwen3",
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        sliding_window=int(window) if window else None,
        activation=_activation(raw, kind),
        scale_embeddings=kind == "gemma",
        norm_adds_one=kind == "gemma",
        partial_rotary_factor=float(rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))),
    )
    _check_rotary(config)
    return config


def _check_rotary(config: DecoderConfig) -> None:
    """The rotary part of a head must split in two halves, and per-frequency scaling
    (LongRoPE, a GGUF file's rope_freqs) needs a factor per rotary frequency: check here
    rather than fail deep inside the forward."""
    rotary, scaling = config.rotary_dim, config.rope_scaling
    if rotary < 2 or rotary % 2:
        raise ModelLoadError(
            f"partial_rotary_factor {config.partial_rotary_factor} turns {rotary} of the {config.head_dim} "
            "dims of each head; rotary embedding needs an even number, at least 2",
            hint="check partial_rotary_factor and head_dim in config.json (or the GGUF file's rope.dimension_count)",
        )
    lists = {"longrope": (scaling.short_factor, scaling.long_factor), "factors": (scaling.short_factor,)}
    if any(len(factors) != rotary // 2 for factors in lists.get(scaling.kind, ())):
        raise ModelLoadError(
            f"{scaling.kind} rope scaling needs {rotary // 2} factors (one per rotary frequency), "
            f"not {' and '.join(str(len(f)) for f in lists[scaling.kind])}",
            hint="check rope_scaling (or rope_parameters) in config.json, or the GGUF file's rope factor tensors",
        )


# Hugging Face's names of the MLP gate's activation -> `DecoderConfig.activation`.
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def _activation(raw: dict[str, Any], kind: str) -> str:
    """The MLP's activation from ``hidden_act`` (what transformers reads; else Gemma's
    older ``hidden_activation``; else transformers' default). Gemma's releases say
    "gelu" and mean the tanh approximation, as transformers reads them."""
    default = "gelu_pytorch_tanh" if kind == "gemma" else "silu"
    name = raw.get("hidden_act") or raw.get("hidden_activation") or default
    if kind == "gemma" and name == "gelu":
        name = "gelu_pytorch_tanh"
    if name not in _ACTIVATIONS:
        raise ModelLoadError(
            f"activation {name!r} of this {kind} model is not supported "
            f"(edgeport.llm's MLP runs {' or '.join(_ACTIVATIONS)})",
        )
    return _ACTIVATIONS[name]


def _rope_scaling(rope: dict[str, Any], raw: dict[str, Any]) -> RopeScaling:
    kind = rope.get("rope_type", rope.get("type", "default")) or "default"
    if raw.get("model_type") == "phi3" and kind in ("su", "yarn"):  # Phi-3's old names, as transformers reads them
        kind = "longrope"
    if kind == "longrope":
        return _longrope(rope, raw)
    if kind == "default":
        return RopeScaling()
    if kind == "linear":
        return RopeScaling("linear", float(rope["factor"]))
    if kind == "llama3":
        return RopeScaling(
            "llama3",
            float(rope["factor"]),
            float(rope.get("low_freq_factor", 1.0)),
            float(rope.get("high_freq_factor", 4.0)),
            int(rope.get("original_max_position_embeddings", 8192)),
        )
    raise ModelLoadError(f"rope scaling {kind!r} is not supported (default, linear, llama3 and longrope are)")


def _longrope(rope: dict[str, Any], raw: dict[str, Any]) -> RopeScaling:
    """LongRoPE as transformers reads it: the pretraining length from config.json's top
    level first (Phi-3 keeps it there), the attention factor from the ratio of the
    context lengths unless given."""
    original = int(raw.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
                   or raw.get("max_position_embeddings", 2048))
    factor = rope.get("factor")
    if factor is None:
        factor = int(raw.get("max_position_embeddings", original)) / original
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeScaling(
        "longrope",
        float(factor),
        original_max_position=original,
        short_factor=tuple(float(f) for f in rope.get("short_factor", ())),
        long_factor=tuple(float(f) for f in rope.get("long_factor", ())),
        attention_factor=float(attention_factor),
    )


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no *.safetensors weights", hint="save the model with safe_serialization=True")
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f))
        for name, values in part.items():
            _check_finite(values, name, f)
        weights.update(part)
    return weights


def _hf_tokenizer(path: Path) -> tuple[str, str | None, dict[str, Any]]:
    """tokenizer.json text, the chat template, and tokenizer_config.json."""
    special = _read_json(path / "tokenizer_config.json")
    template = special.get("chat_template")
    source = path / "tokenizer_config.json"
    if (path / "chat_template.jinja").is_file():
        source = path / "chat_template.jinja"
        template = source.read_text()
    if isinstance(template, str):
        check_chat_template(template, str(source))
    if (path / "tokenizer.json").is_file():
        text = (path / "tokenizer.json").read_text()
    else:  # only a slow tokenizer: let transformers convert it
        _offline()
        from transformers import AutoTokenizer

        try:
            text = AutoTokenizer.from_pretrained(str(path)).backend_tokenizer.to_str()
        except Exception as exc:  # transformers' message lists no file, and was cut to its first line
            raise ModelLoadError(f"{path} has no tokenizer.json, and transformers could not build one from its other "
                                 f"tokenizer files ({type(exc).__name__})",
                                 hint="add the model's tokenizer.json to the directory") from None
    if isinstance(special.get("eos_token"), str) and "eos_token_id" not in special:
        from tokenizers import Tokenizer

        special["eos_token_id"] = Tokenizer.from_str(text).token_to_id(special["eos_token"])
    return text, template if isinstance(template, str) else None, special


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
