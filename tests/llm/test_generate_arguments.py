"""`edgeport.llm.generate` from Python: arguments it cannot honour are one InputError,
and one program's KV cache serves one generation at a time, saying so. A tiny random
Llama (max_seq_len 32)."""

from __future__ import annotations

import math

import pytest

import edgeport
import edgeport.llm
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import registry_for

from tiny_llms import VOCAB, tiny_model_dir

PROMPT = "w5 w6 w7"


@pytest.fixture(scope="module")
def registry():
    return registry_for(CpuBackend())


@pytest.fixture(scope="module")
def program_path(tmp_path_factory, registry):
    model_dir, _ = tiny_model_dir(tmp_path_factory.mktemp("hf"), "llama")
    path = tmp_path_factory.mktemp("llm") / "tiny.edgeport"
    edgeport.llm.export(model_dir, backend=" cpu", max_seq_len=32, prefill_chunk=8, registry=registry).save(path)
    return path


@pytest.fixture
def program(program_path, registry):
    return edgeport.load(program_path, registry=registry)


def ids(generation) -> list[int]:
    return [token.id for token in generation]


def test_a_backend_name_with_spaces_is_the_backend_itself(program):
    """' cpu' used to export another program (padded prefill, no cache window)."""
    assert "window" in [spec.name for spec in program.manifest.methods["prefill"].inputs]


@pytest.mark.parametrize("arguments", [
    {"temperature": -1}, {"temperature": math.nan}, {"temperature": "0.5"}, {"top_p": 5}, {"top_p": 0},
    {"top_p": math.nan}, {"seed": 1.5}, {"seed": -1}, {"seed": 2**64 + 5}, {"max_new_tokens": -3},
    {"max_new_tokens": 0}, {"max_new_tokens": 2.5},
    {"threads": -2}, {"threads": 1000},
])
def test_arguments_it_cannot_honour_are_an_input_error(program, arguments):
    """Each used to run greedy, run as top_p 1, return nothing, or raise a TypeError."""
    with pytest.raises(edgeport.InputError):
        ids(edgeport.llm.generate(program, PROMPT, **arguments))


@pytest.mark.parametrize("prompt", [[5, 6, VOCAB], [5, -1], b"w5", 5])
def test_a_prompt_of_ids_the_model_lacks_or_of_another_type_is_an_input_error(program, prompt):
    """Ids past the vocabulary reached LiteRT ('gather index out of bounds')."""
    with pytest.raises(edgeport.InputError, match="token id|text or a sequence"):
        ids(edgeport.llm.generate(program, prompt))


def test_threads_leave_the_program_as_loaded_and_a_bad_count_harms_nothing(program, program_path, registry):
    """threads=N was written into the program's manifest (and saved with it); -2 failed
    every later generation, blaming the file."""
    before = program.manifest.to_json()
    with pytest.raises(edgeport.InputError):
        ids(edgeport.llm.generate(program, PROMPT, threads=-2))
    expected = ids(edgeport.llm.generate(edgeport.load(program_path, registry=registry), PROMPT, max_new_tokens=6))
    assert ids(edgeport.llm.generate(program, PROMPT, max_new_tokens=6, threads=1)) == expected
    assert ids(edgeport.llm.generate(program, PROMPT, max_new_tokens=6, threads=2)) == expected
    assert program.manifest.to_json() == before


def test_a_generation_interrupted_by_another_says_so_and_the_other_is_right(program):
    """The first generation used to go on over the second one's cache, silently wrong."""
    alone = ids(edgeport.llm.generate(program, PROMPT, max_new_tokens=8))
    other = ids(edgeport.llm.generate(program, "w9 w10", max_new_tokens=8))
    first = edgeport.llm.generate(program, PROMPT, max_new_tokens=8)
    started = [next(first).id, next(first).id]
    assert ids(edgeport.llm.generate(program, "w9 w10", max_new_tokens=8)) == other
    with pytest.raises(edgeport.ExecutionError, match="another generation on this program"):
        next(first)
    assert started == alone[:2]
    assert ids(edgeport.llm.generate(program, PROMPT, max_new_tokens=8)) == alone  # one after another: fine


def test_a_prefill_cut_short_leaves_the_session_knowing_which_rows_it_overwrote(program, monkeypatch):
    """Rows are recorded chunk by chunk. The session used to record a prefill's tokens
    only once all its chunks had run: cut short (Ctrl-C in a chat), it still listed the
    earlier prompt at positions the first chunk had overwritten, and a chat's next turn
    reused those rows, silently wrong."""
    earlier, cut = list(range(3, 23)), [3, 4, *range(40, 58)]  # 20 tokens each, chunks of 8
    fresh = ids(edgeport.llm.Session(program).generate(earlier, max_new_tokens=6))
    session = edgeport.llm.Session(program)
    ids(session.generate(earlier, max_new_tokens=1))
    run, calls = session.runtime.run, []

    def interrupted(method, *args):
        calls.append(method)
        if calls.count("prefill") == 2:
            raise KeyboardInterrupt
        return run(method, *args)

    monkeypatch.setattr(session.runtime, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ids(session.generate(cut, max_new_tokens=6, reuse_cache=True))
    assert session.tokens == cut[:10]  # kept 3, 4; the first chunk wrote positions 2-9
    monkeypatch.setattr(session.runtime, "run", run)
    assert ids(session.generate(earlier, max_new_tokens=6, reuse_cache=True)) == fresh


@pytest.mark.parametrize(("model", "arguments", "error"), [
    (None, {}, "a model is the path of a .gguf file"),
    ("any", {"max_seq_len": 32.0}, "max_seq_len must be a whole number of 2 or more"),
    ("any", {"prefill_chunk": 0}, "prefill_chunk must be a whole number of 1 or more"),
])
def test_export_arguments_of_the_wrong_kind_are_one_error_before_the_model_is_read(model, arguments, error):
    """A TypeError from pathlib, or from torch after the model was read."""
    with pytest.raises(edgeport.EdgeportError, match=error):
        edgeport.llm.export(model, **arguments)


def test_generate_of_no_path_is_a_program_error():
    with pytest.raises(edgeport.ProgramError, match="load takes the path of a .edgeport file, got NoneType"):
        edgeport.llm.generate(None, PROMPT)


def test_generations_from_two_threads_are_right_or_say_they_were_interrupted(program):
    """Both threads' tokens used to come out wrong (3 runs in 3), without an error."""
    import threading

    prompts = {PROMPT: None, "w9 w10": None}
    for prompt in prompts:
        prompts[prompt] = ids(edgeport.llm.generate(program, prompt, max_new_tokens=12))
    outcomes: list[tuple[str, object]] = []

    def generate(prompt):
        for _ in range(3):
            try:
                outcomes.append((prompt, ids(edgeport.llm.generate(program, prompt, max_new_tokens=12))))
            except edgeport.ExecutionError as error:
                outcomes.append((prompt, error))

    threads = [threading.Thread(target=generate, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 6
    assert all(isinstance(got, edgeport.ExecutionError) or got == prompts[prompt] for prompt, got in outcomes)


@pytest.mark.parametrize(("arguments", "error"), [
    ({"max_seq_len": 32, "prefill_chunk": 1}, "a prefill chunk of 1 is too short"),
    ({"max_seq_len": 32, "prefill_chunk": 2}, "a prefill chunk of 2 is too short"),
    ({"max_seq_len": 2, "prefill_chunk": 2}, "a prefill chunk of 2 is too short"),
])
def test_a_chunk_too_short_for_the_one_graph_is_refused_before_the_model_is_read(arguments, error):
    """Chunk 1 was torch's AssertionError (Dim min=max); chunk 2 exported a program all in
    portable torch, which --native then refused with a hint to run the same export."""
    with pytest.raises(edgeport.EdgeportError, match=error) as refused:
        edgeport.llm.export("not read", **arguments)
    assert refused.value.hint == "pass --prefill-chunk 3 or more"


def test_a_cache_too_short_for_the_one_graph_is_refused():
    with pytest.raises(edgeport.EdgeportError, match="a max_seq_len of 2 is too short") as refused:
        edgeport.llm.export("not read", max_seq_len=2, prefill_chunk=3)
    assert refused.value.hint == "pass --max-seq-len 3 or more"


@pytest.mark.parametrize(("call", "error"), [
    (lambda s: s.decode(VOCAB), f"token id {VOCAB} is not one of the model's {VOCAB}"),
    (lambda s: s.decode(True), "token id True is not one of"),
    (lambda s: s.prefill([5] * 40, 0), "40 tokens from position 0 run past this program's KV cache of 32"),
    (lambda s: s.prefill([5], -3), r"prefill's start must be a position from 0 to 3 \(the cache holds 3"),
    (lambda s: s.prefill([5], 4), "prefill's start must be a position from 0 to 3"),
    (lambda s: s.prefill([5], 1.0), "prefill's start must be a position"),
    (lambda s: s.prefill([], 0), "prefill takes at least one token id"),
    (lambda s: s.prefill("w5", 0), "sequence of token ids, got str"),
])
def test_a_direct_prefill_or_decode_the_cache_cannot_take_is_an_input_error(program, call, error):
    """Each reached LiteRT ('gather index out of bounds'), returned array([None]), or,
    past the filled rows, left the session's tokens no longer matching its cache."""
    session = edgeport.llm.session_of(program)
    session.prefill([5, 6, 7], 0)
    with pytest.raises(edgeport.InputError, match=error):
        call(session)
    assert session.tokens == [5, 6, 7]
    session.prefill([8], 3)  # where the cache's tokens end: fine
    assert session.tokens == [5, 6, 7, 8]


@pytest.mark.parametrize(("words", "hint"), [
    (40, "re-export with --max-seq-len 64 (the most the model takes)"),
    (70, "shorten the prompt: the model takes at most 64 positions, so no export of it holds this"),
])
def test_a_prompt_too_long_suggests_only_a_cache_the_model_takes(program, words, hint):
    """The hint suggested --max-seq-len 128 for this model of 64 positions (16384 for
    SmolLM2's 8192), which export then refused."""
    with pytest.raises(edgeport.llm.PromptTooLong) as refused:
        edgeport.llm.generate(program, " ".join(["w5"] * words))
    assert hint in refused.value.hint


def test_the_cache_hint_without_the_models_limit_doubles():
    from edgeport.llm.session import longer_cache_hint

    assert longer_cache_hint(130, None) == "shorten the prompt, or re-export with --max-seq-len 256 or more"
    assert longer_cache_hint(130, 8192).endswith("--max-seq-len 256 or more (the model takes up to 8192)")


def test_an_unknown_scheme_is_hinted_with_the_schemes_llm_export_takes():
    """The hint listed int8, palettize4 and auto, each of which llm export then refused."""
    with pytest.raises(edgeport.EdgeportError, match="unknown quantization scheme 'int3'") as refused:
        edgeport.llm.export("not read", quantize="int3")
    assert refused.value.hint.startswith("edgeport llm export quantizes with int8-dynamic or int4-weight with --backend cpu")
    assert "palettize" not in refused.value.hint and "auto" not in refused.value.hint


def test_threads_zero_after_another_count_starts_an_every_core_session(program):
    """threads=0 (every core) kept the 1-thread session: only a truthy count was compared."""
    one = edgeport.llm.session_of(program, 1)
    every = edgeport.llm.session_of(program, 0)
    assert every is not one and every.threads == 0
    assert {info.options["threads"] for info in every.program.manifest.artifacts.values()
            if "threads" in info.options} == {0}
    assert edgeport.llm.session_of(program) is every and edgeport.llm.session_of(program, 0) is every
