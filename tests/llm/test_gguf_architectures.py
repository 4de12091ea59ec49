"""GGUF files of each architecture edgeport reads (llama, qwen2, qwen3), written from small
random Hugging Face models the way llama.cpp's converter writes them: the ``gguf``
package's tensor names for the architecture, llama's rotary row order, the metadata
under the architecture's prefix, a byte-level BPE vocabulary. transformers' own GGUF
loader reads each file back to the model it came from (so the file is what llama.cpp
would write), and edgeport's export of the file computes that model's logits."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import edgeport.llm
from edgeport.llm.loader import GGUF_ARCHITECTURES, ModelLoadError, load_model
from edgeport.llm.text import TextCodec

from test_architectures import VOCAB, tiny_model_dir

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

# A byte-level BPE vocabulary of VOCAB tokens: one special, single characters, a few merges.
MERGES = ["Ġ t", "h e", "Ġt he", "i n"]
TOKENS = ["<|endoftext|>", "Ġ", *(chr(c) for c in range(ord("!"), ord("!") + VOCAB - 6)), "Ġt", "he", "Ġthe", "in"]
PRE_TOKENIZER = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}


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
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)  # as llama.cpp does for every config that states its head_dim
    writer.add_value_length(head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER[arch])
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(TOKENS) - 1))
    writer.add_token_merges(MERGES)
    writer.add_eos_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        value = value.numpy()
        if arch == "llama" and ".q_proj." in name:  # llama.cpp's rotary pairs: rows 0, d/2, 1, d/2+1, ...
            value = _permute(value, c.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            value = _permute(value, c.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module", params=GGUF_ARCHITECTURES)
def gguf_model(request, tmp_path_factory):
    """(arch, the GGUF file, the Hugging Face model it was written from)."""
    arch = request.param
    root = tmp_path_factory.mktemp("gguf")
    overrides = {"rope_scaling": None}  # no Llama 3.1 scaling: GGUF holds that as rope_freqs
    if arch == "qwen3":  # transformers reads a qwen3 file's head size as its Qwen3Config default, not from the file
        overrides["head_dim"] = transformers.Qwen3Config().head_dim
    _, model = tiny_model_dir(root, arch, **overrides)
    path = root / f"{arch}.gguf"
    write_gguf(path, arch, model)
    return arch, path, model


def _logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


def test_transformers_reads_the_file_back_to_the_model_it_was_written_from(gguf_model):
    arch, path, model = gguf_model
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    tokens = list(range(3, 17))
    assert torch.allclose(_logits(theirs, tokens), _logits(model, tokens), atol=1e-5)


def test_the_exported_file_computes_the_models_logits(gguf_model, cpu_registry):
    arch, path, model = gguf_model
    loaded = load_model(path)
    assert loaded.config.architecture == arch
    assert (loaded.config.attention_bias, loaded.config.qk_norm) == (arch == "qwen2", arch == "qwen3")
    program = edgeport.llm.export(loaded, max_seq_len=32, prefill_chunk=8, registry=cpu_registry)
    session = edgeport.llm.Session(program)
    prompt, continuation = list(range(5, 16)), [20, 30]
    ours = torch.stack([torch.from_numpy(x) for x in
                        [session.prefill(prompt, 0)] + [session.decode(t) for t in continuation]])
    full = _logits(model, prompt + continuation)[len(prompt) - 1:]
    assert torch.allclose(ours, full, atol=1e-4, rtol=1e-4), (ours - full).abs().max()


def test_the_vocabulary_encodes_as_transformers_reads_it(gguf_model):
    _, path, _ = gguf_model
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
    with pytest.raises(ModelLoadError, match="architecture 'falcon' is not supported"):
        load_model(path)
