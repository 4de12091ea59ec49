"""GGUF files of each architecture edgeport reads (llama, qwen2, qwen3, gemma, phi3),
written from small random Hugging Face models the way llama.cpp's converter writes them:
the ``gguf`` package's tensor names for the architecture, llama's rotary row order,
Llama 3.1's rope scaling as per-frequency factors (``rope_freqs``), Gemma's norms
stored as 1 + weight, Phi-3's fused projections, partial rotary and LongRoPE factors as
tensors, the metadata under the architecture's prefix, a byte-level
BPE vocabulary. transformers' own GGUF loader reads each file it supports back to the
weights it was written from (so the file is what llama.cpp would write), and edgeport's
export of every file computes the source model's logits."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import edgeport.llm
from edgeport.llm.loader import GGUF_ARCHITECTURES, ModelLoadError, load_model
from edgeport.llm.text import TextCodec

from tiny_llms import VOCAB, tiny_model_dir

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

# A byte-level BPE vocabulary of VOCAB tokens: one special, single characters, a few merges.
MERGES = ["Ġ t", "h e", "Ġt he", "i n"]
TOKENS = ["<|endoftext|>", "Ġ", *(chr(c) for c in range(ord("!"), ord("!") + VOCAB - 6)), "Ġt", "he", "Ġthe", "in"]
PRE_TOKENIZER = {"qwen2": "qwen2", "qwen3": "qwen2"}  # the others: "llama-bpe"
TRANSFORMERS_READS = ("llama", "qwen2", "qwen3", "phi3")  # transformers 5.23 reads no gemma (v1) GGUF


def write_gguf(path, arch: str, model) -> None:
    """``model`` as llama.cpp's converter writes it, in fp32."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    if arch == "phi3":
        _phi3_metadata(writer, c)
    else:  # llama.cpp's base converter (llama, qwen) and its Gemma converter: no rope metadata for Gemma
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        if arch != "gemma":
            writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
            writer.add_rope_dimension_count(head_dim)
        if c.rope_parameters.get("rope_type") == "llama3":
            writer.add_tensor("rope_freqs.weight", _llama3_rope_freqs(c.rope_parameters, head_dim))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER.get(arch, "llama-bpe"))
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(TOKENS) - 1))
    writer.add_token_merges(MERGES)
    writer.add_eos_token_id(0)
    writer.add_pad_token_id(0)  # else transformers' Phi3Config pads with 32000, past this vocabulary
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        value = value.numpy()
        if arch == "llama" and ".q_proj." in name:  # llama.cpp's rotary pairs: rows 0, d/2, 1, d/2+1, ...
            value = _permute(value, c.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            value = _permute(value, c.num_key_value_heads)
        elif arch == "gemma" and name.endswith("norm.weight"):
            value = value + 1.0  # Gemma's RMSNorm scales by 1 + weight: llama.cpp stores the sum
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _phi3_metadata(writer, c) -> None:
    """What llama.cpp's Phi-3 converter writes of the rotary embedding and the window."""
    rope = c.rope_parameters
    head_dim = c.hidden_size // c.num_attention_heads
    original = rope.get("original_max_position_embeddings") or c.original_max_position_embeddings
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_rope_dimension_count(int(rope.get("partial_rotary_factor", 1.0) * head_dim))
    writer.add_rope_scaling_orig_ctx_len(original)
    writer.add_sliding_window(c.sliding_window or 0)
    if rope.get("rope_type") == "longrope":
        scale = c.max_position_embeddings / original
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        for kind in ("long", "short"):
            writer.add_tensor(f"rope_factors_{kind}.weight", np.array(rope[f"{kind}_factor"], dtype=np.float32))


def _llama3_rope_freqs(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3.1's scaling as llama.cpp's converter stores it: one divisor per rotary
    frequency, 1 for short wavelengths, ``factor`` for long ones, a blend between."""
    original, factor = rope["original_max_position_embeddings"], rope["factor"]
    divisors = []
    for freq in 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim):
        wavelen = 2 * math.pi / freq
        if wavelen < original / rope["high_freq_factor"]:
            divisors.append(1.0)
        elif wavelen > original / rope["low_freq_factor"]:
            divisors.append(factor)
        else:
            smooth = (original / wavelen - rope["low_freq_factor"]) / (rope["high_freq_factor"] - rope["low_freq_factor"])
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    """``gguf_model(arch)``: (the GGUF file, the Hugging Face model it was written from),
    written once per test module."""
    written = {}

    def get(arch: str):
        if arch not in written:
            root = tmp_path_factory.mktemp("gguf")
            # transformers reads a qwen3 file's head size as its Qwen3Config default
            overrides = {"head_dim": transformers.Qwen3Config().head_dim} if arch == "qwen3" else {}
            _, model = tiny_model_dir(root, arch, **overrides)
            write_gguf(root / f"{arch}.gguf", arch, model)
            written[arch] = root / f"{arch}.gguf", model
        return written[arch]

    return get


def _logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("arch", TRANSFORMERS_READS)
def test_transformers_reads_the_file_back_to_the_weights_it_was_written_from(gguf_model, arch):
    path, model = gguf_model(arch)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).state_dict()
    ours = model.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[name], ours[name]) for name in ours)


@pytest.mark.parametrize("arch", GGUF_ARCHITECTURES)
def test_the_exported_file_computes_the_models_logits(gguf_model, cpu_registry, arch):
    path, model = gguf_model(arch)
    loaded = load_model(path)
    assert loaded.config.architecture == arch
    assert (loaded.config.attention_bias, loaded.config.qk_norm) == (arch == "qwen2", arch == "qwen3")
    assert loaded.config.rope_scaling.kind == {"llama": "factors", "phi3": "longrope"}.get(arch, "default")
    program = edgeport.llm.export(loaded, max_seq_len=32, prefill_chunk=8, registry=cpu_registry)
    session = edgeport.llm.Session(program)
    prompt, continuation = list(range(5, 16)), [20, 30]
    ours = torch.stack([torch.from_numpy(x) for x in
                        [session.prefill(prompt, 0)] + [session.decode(t) for t in continuation]])
    full = _logits(model, prompt + continuation)[len(prompt) - 1:]
    assert torch.allclose(ours, full, atol=1e-4, rtol=1e-4), (ours - full).abs().max()


@pytest.mark.parametrize("arch", TRANSFORMERS_READS)
def test_the_vocabulary_encodes_as_transformers_reads_it(gguf_model, arch):
    path, _ = gguf_model(arch)
    loaded = load_model(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "thin as the tea"
    ids = TextCodec(loaded.tokenizer_json, None, None).encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False)
    assert TOKENS.index("Ġthe") in ids and TOKENS.index("in") in ids  # the merges were applied


def test_a_gguf_architecture_edgeport_does_not_read_is_refused_by_name(tmp_path):
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="architecture 'falcon' is not supported") as refused:
        load_model(path)
    assert refused.value.hint == ("edgeport reads llama, mistral, qwen2, qwen3, gemma, phi3 models, from GGUF or "
                                  "Hugging Face directories")  # not "from its Hugging Face directory instead"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_gguf_with_non_finite_weights_is_refused_naming_the_tensor(tmp_path, bad):
    """It exported, and every logit was NaN: generation printed token 0 forever, rc 0."""
    path, model = tiny_model_dir(tmp_path, "llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 5] = bad
    write_gguf(tmp_path / "bad.gguf", "llama", model)
    with pytest.raises(ModelLoadError, match=r"bad.gguf: tensor blk.1.ffn_down.weight holds 1 NaN or infinite"):
        load_model(tmp_path / "bad.gguf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_hugging_face_directory_with_nan_weights_is_refused_naming_the_tensor(tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    path, _ = tiny_model_dir(tmp_path, "llama")
    (weights_file,) = path.glob("*.safetensors")
    weights = {name: values.to(dtype) for name, values in load_file(str(weights_file)).items()}
    weights["model.embed_tokens.weight"][7] = math.nan
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"tensor model.embed_tokens.weight holds 64 NaN or infinite value\(s\)"):
        load_model(path)


def test_a_gguf_cut_short_is_hinted_as_a_download_not_a_directory(gguf_model, tmp_path):
    """The hint said what a Hugging Face directory needs, for a .gguf file."""
    path, _ = gguf_model("llama")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 4096])
    with pytest.raises(ModelLoadError) as refused:
        load_model(cut)
    assert refused.value.hint == "check the download is whole"


def test_a_directory_without_tokenizer_json_names_the_file(tmp_path):
    """transformers' message was cut off ("Couldn't instantiate the backend tokenizer from one of: ")."""
    path, _ = tiny_model_dir(tmp_path, "llama")
    (path / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="has no tokenizer.json, and transformers could not build one") as refused:
        load_model(path)
    assert refused.value.hint == "add the model's tokenizer.json to the directory"
