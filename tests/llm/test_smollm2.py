"""SmolLM2-135M on the cpu backend, fp32, real weights: placement, tokens against Hugging
Face eager, state between calls, and the prompt-length limit."""

from __future__ import annotations

import pytest
import torch

import edgeport
import edgeport.llm
from edgeport.llm import PromptTooLong

from conftest import DATA, MAX_SEQ_LEN, PREFILL_CHUNK

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,"]


@pytest.fixture(scope="module")
def hf_tokens(hf_smol) -> dict[str, list[int]]:
    """Hugging Face eager's 32 greedy tokens for each prompt (it stops early at its EOS)."""
    model, tokenizer = hf_smol
    tokens = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            tokens[prompt] = model.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1]:].tolist()
    return tokens


def test_both_methods_lower_whole_to_cpu_and_write_the_cache_row_by_row(smol):
    for method in ("prefill", "decode"):
        report = smol.report(method)
        assert {n["backend"] for n in report["nodes"]} == {"cpu"}
        plan = smol.manifest.methods[method]
        assert [s.kind for s in plan.steps] == ["delegate"]
        assert plan.state_writes == {} and len(plan.row_updates) == 2 * 30  # k and v of each layer
    assert len(smol.manifest.state) == 60
    meta = smol.manifest.metadata["llm"]
    assert meta["max_seq_len"] == MAX_SEQ_LEN and meta["stop_token_ids"] == [2]
    assert meta["tokenizer"] in smol.manifest.files and meta["chat_template"] in smol.manifest.files


def test_weights_are_stored_and_loaded_once_for_both_methods_and_the_tied_head(smol):
    """One TFLite model of a dynamic chunk length that both methods run (one_graph.py), so
    XNNPACK packs its weights once; lm_head reads the embedding."""
    weights = 134_515_008 * 4  # SmolLM2's parameters in fp32, lm_head tied to the embedding
    [path] = smol.manifest.artifacts
    decode, prefill = (smol.manifest.methods[m] for m in ("decode", "prefill"))
    assert decode.steps == prefill.steps and [s.artifact for s in decode.steps] == [path]
    assert weights < len(smol.files[path]) < weights * 1.01


@pytest.mark.parametrize("prompt", PROMPTS)
def test_32_greedy_tokens_equal_hugging_face_eager(smol, hf_tokens, prompt):
    expected = hf_tokens[prompt]
    generation = edgeport.llm.generate(smol, prompt, max_new_tokens=32)
    tokens = [t.id for t in generation]
    stopped = generation.stats.stop_reason == "stop_token"
    assert tokens == expected[: len(tokens)] and (len(tokens) == 32 or stopped and expected[len(tokens)] == 2)
    if prompt == PROMPTS[0]:
        assert generation.text.startswith(" Paris.")


def test_two_generations_in_a_row_equal_fresh_ones(smol, hf_tokens):
    """Whatever ran before, a generation starts from an empty cache: each equals the
    reference's fresh generation."""
    first = [t.id for t in edgeport.llm.generate(smol, PROMPTS[1], max_new_tokens=12)]
    other = [t.id for t in edgeport.llm.generate(smol, PROMPTS[0], max_new_tokens=12)]
    again = [t.id for t in edgeport.llm.generate(smol, PROMPTS[1], max_new_tokens=12)]
    assert first == again == hf_tokens[PROMPTS[1]][:12]
    assert other == hf_tokens[PROMPTS[0]][:12]


def test_prefill_then_decode_equals_a_full_sequence_forward(smol, hf_smol):
    model, _ = hf_smol
    session = edgeport.llm.session_of(smol)
    prompt = session.text.encode((DATA / "gettysburg_address.txt").read_text())[:45]  # two prefill chunks
    assert len(prompt) > PREFILL_CHUNK
    ours = [session.prefill(prompt, 0)]
    continuation = [int(ours[-1].argmax())]
    for _ in range(6):
        ours.append(session.decode(continuation[-1]))
        continuation.append(int(ours[-1].argmax()))
    with torch.no_grad():
        full = model(torch.tensor([prompt + continuation[:-1]])).logits[0, len(prompt) - 1:]
    ours = torch.stack([torch.from_numpy(o) for o in ours])
    assert torch.allclose(ours, full, atol=2e-3, rtol=0), (ours - full).abs().max()


def test_a_chat_reuses_the_conversation_in_the_cache(smol):
    session = edgeport.llm.session_of(smol)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = session.chat(messages, max_new_tokens=16)
    list(reply)
    assert "Paris" in reply.text
    messages += [{"role": "assistant", "content": reply.text}, {"role": "user", "content": "And of Germany?"}]
    second = session.chat(messages, max_new_tokens=16)
    assert "Berlin" in "".join(t.text for t in second)
    assert second.stats.prefilled_tokens < second.stats.prompt_tokens // 2


def test_a_prompt_longer_than_the_cache_is_a_clear_error(smol):
    text = (DATA / "declaration_of_independence.txt").read_text()
    with pytest.raises(PromptTooLong, match=r"the prompt is \d+ tokens; this program's KV cache holds 128") as err:
        edgeport.llm.generate(smol, text)
    assert "--max-seq-len" in err.value.hint


def test_generation_stops_at_max_new_tokens_and_at_the_end_of_the_cache(smol):
    short = edgeport.llm.generate(smol, PROMPTS[1], max_new_tokens=3)
    assert len(list(short)) == 3 and short.stats.stop_reason == "max_new_tokens"
    session = edgeport.llm.session_of(smol)
    prompt = session.text.encode((DATA / "gettysburg_address.txt").read_text())[: MAX_SEQ_LEN - 4]
    near_end = session.generate(prompt, max_new_tokens=50)
    tokens = list(near_end)
    assert near_end.stats.stop_reason in ("max_seq_len", "stop_token") and len(tokens) <= 5
    full = session.text.encode((DATA / "gettysburg_address.txt").read_text())[:MAX_SEQ_LEN]
    session.prefill(full, 0)
    with pytest.raises(edgeport.EdgeportError, match=f"the KV cache is full: its {MAX_SEQ_LEN} positions") as err:
        session.decode(full[-1])
    assert "--max-seq-len" in err.value.hint
