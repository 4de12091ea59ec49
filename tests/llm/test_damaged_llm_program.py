"""An LLM program whose LLM facts or tokenizer were edited and re-sealed (so no checksum
catches it) fails at its first generation as one `ProgramError` naming what is wrong,
never a KeyError, a TypeError, the tokenizers library's bare Exception or, worse, a
different answer (a negative prefill chunk used to generate other tokens)."""

from __future__ import annotations

import json

import pytest

import edgeport
from edgeport.llm.text import NotAnLLMProgram

from program_zip import pack, unpack
from tiny_llms import tiny_model_dir

PROMPT = "w5 w9 w13"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, cpu_registry) -> bytes:
    model_dir, _ = tiny_model_dir(tmp_path_factory.mktemp("hf"), "qwen2")
    path = tmp_path_factory.mktemp("llm") / "tiny.edgeport"
    edgeport.llm.export(model_dir, max_seq_len=32, prefill_chunk=8, registry=cpu_registry).save(path)
    return path.read_bytes()


def generated(data: bytes, tmp_path, registry) -> list[int]:
    path = tmp_path / "edited.edgeport"
    path.write_bytes(data)
    program = edgeport.load(path, registry=registry)
    return [token.id for token in edgeport.llm.generate(program, PROMPT, max_new_tokens=4)]


def with_llm_facts(data: bytes, **changes) -> bytes:
    manifest, files = unpack(data)
    llm = manifest["metadata"]["llm"]
    for key, value in changes.items():
        if value is _REMOVED:
            del llm[key]
        else:
            llm[key] = value
    return pack(manifest, files)


_REMOVED = object()

BAD_FACTS = {
    "max_seq_len missing": {"max_seq_len": _REMOVED},
    "max_seq_len a string": {"max_seq_len": "x"},
    "max_seq_len zero": {"max_seq_len": 0},
    "prefill_chunk zero": {"prefill_chunk": 0},
    "prefill_chunk negative": {"prefill_chunk": -1},
    "prefill_chunk past the cache": {"prefill_chunk": 33},
    "max_seq_len past the cache": {"max_seq_len": 64},  # a long prompt passed, then LiteRT failed
    "stop_token_ids a number": {"stop_token_ids": 5},
    "stop_token_ids of strings": {"stop_token_ids": ["a"]},
    "bos_token_id negative": {"bos_token_id": -1},
    "generation a string": {"generation": "x"},
    "tokenizer an object": {"tokenizer": {}},
    "tokenizer a missing file": {"tokenizer": "llm/nothing.json"},
    "chat_template an array": {"chat_template": []},
}


@pytest.mark.parametrize("changes", BAD_FACTS.values(), ids=BAD_FACTS.keys())
def test_damaged_llm_facts_are_one_program_error_naming_the_field(saved, tmp_path, cpu_registry, changes):
    with pytest.raises(edgeport.ProgramError, match="LLM facts") as caught:
        generated(with_llm_facts(saved, **changes), tmp_path, cpu_registry)
    assert next(iter(changes)) in str(caught.value)
    assert "re-export" in caught.value.hint


def test_llm_facts_that_are_no_object_are_damage_and_none_at_all_is_no_llm(saved, tmp_path, cpu_registry):
    manifest, files = unpack(saved)
    manifest["metadata"]["llm"] = []
    with pytest.raises(edgeport.ProgramError, match="must be an object"):
        generated(pack(manifest, files), tmp_path, cpu_registry)
    del manifest["metadata"]["llm"]
    with pytest.raises(NotAnLLMProgram):
        generated(pack(manifest, files), tmp_path, cpu_registry)


TOKENIZERS = {
    "not JSON": b"garbage",
    "empty": b"",
    "an empty object": b"{}",
    "not UTF-8": b"\xff\xfe{",
}


@pytest.mark.parametrize("tokenizer", TOKENIZERS.values(), ids=TOKENIZERS.keys())
def test_a_damaged_tokenizer_is_one_program_error(saved, tmp_path, cpu_registry, tokenizer):
    manifest, files = unpack(saved)
    files[manifest["metadata"]["llm"]["tokenizer"]] = tokenizer
    with pytest.raises(edgeport.ProgramError, match="tokenizer"):
        generated(pack(manifest, files, relist=True), tmp_path, cpu_registry)


def test_the_undamaged_program_generates_the_same_tokens_after_a_reseal(saved, tmp_path, cpu_registry):
    """The edits above are the only change: re-sealing alone changes no token."""
    manifest, files = unpack(saved)
    assert generated(pack(json.loads(json.dumps(manifest)), files), tmp_path, cpu_registry) == \
        generated(saved, tmp_path, cpu_registry)


def test_a_tokenizer_rewritten_past_the_models_vocabulary_is_a_program_error(saved, tmp_path, cpu_registry):
    """A consistent rewrite: "w9" encoded as id 500 of a 96-row model reached LiteRT's
    gather, an ExecutionError blaming the run."""
    manifest, files = unpack(saved)
    name = manifest["metadata"]["llm"]["tokenizer"]
    tokenizer = json.loads(files[name])
    tokenizer["model"]["vocab"]["w9"] = 500
    files[name] = json.dumps(tokenizer).encode()
    with pytest.raises(edgeport.ProgramError, match="tokenizer gave token id 500, but its model has rows for 96"):
        generated(pack(manifest, files, relist=True), tmp_path, cpu_registry)
    from edgeport.llm import native  # the native runner's spec checks the same (LiteRT's gather failed)

    with pytest.raises(edgeport.ProgramError, match="tokenizer gave token id 500"):
        native.write_spec(native.Request(str(tmp_path / "edited.edgeport"), PROMPT))


@pytest.mark.parametrize("method", ["prefill", "decode"])
def test_an_llm_program_without_one_of_its_methods_is_a_program_error(saved, tmp_path, cpu_registry, method):
    """A consistent rewrite that renames a method (or an LLM's facts put on another
    program) was a KeyError, "internal error" in the CLI, in Python and in --native."""
    manifest, files = unpack(saved)
    manifest["methods"]["step"] = {**manifest["methods"].pop(method), "name": "step"}
    manifest["report"]["step"] = manifest["report"].pop(method)
    with pytest.raises(edgeport.ProgramError, match=f"LLM facts are damaged: it has no {method} method"):
        generated(pack(manifest, files), tmp_path, cpu_registry)
    from edgeport.llm import native

    with pytest.raises(edgeport.ProgramError, match=f"it has no {method} method"):
        native.write_spec(native.Request(str(tmp_path / "edited.edgeport"), PROMPT))
