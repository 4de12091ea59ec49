"""Our GGUF reader against files written by the gguf package, and llama.cpp's rotary row
order undone."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport.llm.gguf_file import GgufFormatError, read_gguf
from edgeport.llm.loader import _unpermute_rotary

gguf = pytest.importorskip("gguf")


def test_reads_metadata_skips_long_arrays_and_maps_tensors(tmp_path):
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_string("general.name", "tiny")
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(2000)])
    weight = np.arange(24, dtype=np.float32).reshape(4, 6)
    writer.add_tensor("blk.0.attn_q.weight", weight)
    writer.add_tensor("output_norm.weight", np.ones(6, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parsed = read_gguf(path)
    assert parsed.metadata["llama.block_count"] == 2 and parsed.metadata["general.name"] == "tiny"
    assert parsed.metadata["tokenizer.ggml.tokens"] == 2000  # left out, its length kept
    q = parsed.tensors["blk.0.attn_q.weight"]
    assert q.shape == (4, 6) and np.array_equal(q.data.view(np.float32)[:24].reshape(4, 6), weight)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(GgufFormatError, match="bad magic"):
        read_gguf(path)


def test_unpermute_undoes_llama_cpps_rotary_row_order():
    heads, head_dim, hidden = 3, 8, 5
    w = np.random.default_rng(0).standard_normal((heads * head_dim, hidden)).astype(np.float32)
    # llama.cpp's convert script: each head's rows (h0..h_{d/2-1}, h_{d/2}..) become pairs (0, d/2, 1, d/2+1, ...)
    interleaved = w.reshape(heads, 2, head_dim // 2, hidden).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(_unpermute_rotary(interleaved, heads), w)
