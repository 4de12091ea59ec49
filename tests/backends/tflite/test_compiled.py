"""LiteRT's compiled model through its C API (`litert_c`, `CompiledExecutable`): the same
answers as the Interpreter, a static input read in place, XNNPACK's weight cache built
once under a temporary name and mapped by later loads, and the cpu backend falling
back on the Interpreter, with the reason logged, when the C API cannot load a model."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

import edgeport
from edgeport.backend import WEIGHT_CACHE_KEY
from edgeport.errors import InputError
from edgeport.backends.cpu import CpuBackend
from edgeport.backends.tflite import CompiledExecutable, TfliteExecutable, litert_c, write_tflite
from edgeport.backends.tflite.compiled import dynamic_inputs, weight_cache_path
from tflite_helpers import Lambda

pytestmark = pytest.mark.skipif(bool(litert_c.missing()), reason=litert_c.missing() or "")


def _attention_like(m, x, state):
    """Scores over a static state (a KV cache's stand-in) and a chunk of dynamic length,
    with a weight XNNPACK packs (the matmul by a constant)."""
    scores = torch.cat([x @ state.t(), x @ x.t()], dim=-1).softmax(-1)  # (T, S + T)
    return (scores[:, : state.shape[0]] @ state + scores[:, state.shape[0] :] @ x) @ _WEIGHT


_WEIGHT = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model() -> bytes:
    chunk = torch.export.Dim("chunk", min=1, max=8)
    program = torch.export.export(Lambda(_attention_like), (torch.randn(8, 4), torch.randn(6, 4)),
                                  dynamic_shapes=(({0: chunk}, None),)).run_decompositions()
    return write_tflite(program).data


def test_the_compiled_model_answers_as_the_interpreter_at_every_length(model):
    compiled, interpreter = CompiledExecutable(model, threads=1), TfliteExecutable(model, threads=1)
    assert dynamic_inputs(memoryview(model)) == [0]
    state = np.random.default_rng(0).standard_normal((6, 4), dtype=np.float32)
    for length in (8, 1, 5, 1):
        x = np.random.default_rng(length).standard_normal((length, 4), dtype=np.float32)
        (ours,), (theirs,) = compiled.run([x, state]), interpreter.run([x, state])
        assert ours.shape == (length, 4)
        np.testing.assert_array_equal(ours, theirs)


def test_a_static_input_is_read_in_place_and_outputs_are_copies(model):
    compiled = CompiledExecutable(model, threads=1)
    assert compiled.input_buffer(0) is None  # a dynamic dim: no buffer of one shape to hand out
    state = compiled.input_buffer(1)
    state[:] = 1.0
    x = np.ones((3, 4), np.float32)
    (first,) = compiled.run([x, state])
    state[:] = 2.0  # changed in place, passed back as itself: the model reads the change
    (second,) = compiled.run([x, state])
    expected = _attention_like(None, torch.from_numpy(x), torch.from_numpy(state.copy())).numpy()
    np.testing.assert_allclose(second, expected, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(first, second)  # the first result was a copy, not overwritten


def test_the_weight_cache_is_built_once_published_whole_and_reused(model, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    path = weight_cache_path("0" * 64)
    x, state = np.ones((2, 4), np.float32), np.full((6, 4), 0.5, np.float32)
    first = CompiledExecutable(model, threads=1, checksum="0" * 64)
    assert first.weight_cache == str(path) and path.stat().st_size > 0
    assert sorted(os.listdir(path.parent)) == [path.name, path.name + ".sha256"]  # no "*.building" left
    built = path.stat()
    seal = path.with_name(path.name + ".sha256")
    os.utime(seal, ns=(built.st_atime_ns, built.st_mtime_ns - 10**9))
    second = CompiledExecutable(model, threads=1, checksum="0" * 64)
    assert path.stat().st_ino == built.st_ino  # mapped, not packed again (that publishes a new file)
    assert seal.stat().st_mtime_ns > built.st_mtime_ns - 10**9  # marked used, for the cache's bound
    np.testing.assert_array_equal(first.run([x, state])[0], second.run([x, state])[0])
    assert weight_cache_path("1" * 64) != path  # another artifact, another file


def test_a_damaged_weight_cache_is_packed_again_not_run(model, tmp_path, monkeypatch, caplog):
    """A byte changed in the packed weights used to give other outputs, silently."""
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    path = weight_cache_path("0" * 64)
    x, state = np.ones((2, 4), np.float32), np.full((6, 4), 0.5, np.float32)
    (expected,) = CompiledExecutable(model, threads=1, checksum="0" * 64).run([x, state])
    damaged = bytearray(path.read_bytes())
    weight = damaged.find(_WEIGHT[0, 0].numpy().tobytes())  # XNNPACK packs fp32 weights as they are
    assert weight > 0
    damaged[weight + 3] ^= 0x40  # the exponent: another weight, no error
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
        again = CompiledExecutable(model, threads=1, checksum="0" * 64)
    np.testing.assert_array_equal(again.run([x, state])[0], expected)
    assert "is damaged" in caplog.text
    assert path.read_bytes() != bytes(damaged)


def test_publishing_a_weight_cache_keeps_the_cache_within_its_bound(model, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    old = weight_cache_path("1" * 64)
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x" * 4096)  # an earlier artifact's packed weights, not used since
    os.utime(old, (1, 1))
    monkeypatch.setenv("EDGEPORT_CACHE_MAX", "1")  # one byte: only the file just built stays
    CompiledExecutable(model, threads=1, checksum="0" * 64)
    built = weight_cache_path("0" * 64).name
    assert sorted(os.listdir(old.parent)) == [built, built + ".sha256"]


def test_a_malformed_cache_bound_is_refused_before_the_weights_are_packed(model, tmp_path, monkeypatch):
    """It was read only when the packed file was published, after the packing (a minute
    for an LLM), and the pack was lost with the error."""
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGEPORT_CACHE_MAX", "lots")
    monkeypatch.setattr("edgeport.backends.tflite.compiled._compile", _never_called)
    with pytest.raises(InputError, match="EDGEPORT_CACHE_MAX='lots' is not a size"):
        CompiledExecutable(model, threads=1, checksum="0" * 64)
    assert not any(tmp_path.rglob("*"))


def _never_called(*args):
    raise AssertionError("packed the weights before checking the cache's bound")


def test_an_unwritable_cache_directory_runs_without_a_cache(model, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(blocker))  # a file where the directory would go
    with caplog.at_level(logging.WARNING):
        compiled = CompiledExecutable(model, threads=1, checksum="0" * 64)
    assert compiled.weight_cache == ""
    assert "weight cache cannot be written" in caplog.text
    assert compiled.run([np.ones((2, 4), np.float32), np.ones((6, 4), np.float32)])[0].shape == (2, 4)


def _artifact(model: bytes, **metadata) -> edgeport.Artifact:
    base = {"inputs": ["x", "state"], "outputs": ["out"]}
    return edgeport.Artifact(data=model, suffix=".tflite", metadata={**base, **metadata})


def _names(model: bytes) -> dict[str, list[str]]:
    compiled = litert_c.CompiledModel(memoryview(model), threads=1)
    return {"inputs": [s.name for s in compiled.inputs], "outputs": [s.name for s in compiled.outputs]}


def test_the_cpu_backend_compiles_an_artifact_with_a_weight_cache_key_and_else_interprets(model, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    names = _names(model)
    assert isinstance(CpuBackend().load(_artifact(model, **names)), TfliteExecutable)
    loaded = CpuBackend().load(_artifact(model, **names, **{WEIGHT_CACHE_KEY: "0" * 64}))
    assert isinstance(loaded, CompiledExecutable) and loaded.weight_cache


def test_the_cpu_backend_falls_back_on_the_interpreter_when_the_c_api_is_missing(model, monkeypatch, caplog):
    def missing():
        raise litert_c.LiteRtCMissing("libLiteRt.so has no LiteRtCreateCompiledModel")

    monkeypatch.setattr(litert_c, "library", missing)
    with caplog.at_level(logging.WARNING):
        loaded = CpuBackend().load(_artifact(model, **_names_without_c_api(model), **{WEIGHT_CACHE_KEY: "0" * 64}))
    assert isinstance(loaded, TfliteExecutable)
    assert "has no LiteRtCreateCompiledModel" in caplog.text and "Interpreter" in caplog.text


def _names_without_c_api(model: bytes) -> dict[str, list[str]]:
    details = TfliteExecutable(model, threads=1).interpreter.get_signature_list()["serving_default"]
    return {"inputs": details["inputs"], "outputs": details["outputs"]}


def test_inputs_ordered_unlike_the_artifact_metadata_are_refused_and_interpreted(model, tmp_path, monkeypatch,
                                                                               caplog):
    monkeypatch.setenv("EDGEPORT_CACHE_DIR", str(tmp_path))
    names = _names(model)
    swapped = {"inputs": names["inputs"][::-1], "outputs": names["outputs"]}
    with caplog.at_level(logging.WARNING):
        loaded = CpuBackend().load(_artifact(model, **swapped, **{WEIGHT_CACHE_KEY: "0" * 64}))
    assert isinstance(loaded, TfliteExecutable) and "orders its inputs" in caplog.text
    assert os.listdir(tmp_path / "xnnpack") == []  # the cache it began is gone
