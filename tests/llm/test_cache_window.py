"""The cpu program's cache window (`one_graph`): a call attends over only the cache rows
filled before it, rounded up to a bucket, and gives the logits of attending over the
whole cache; programs exported before the window (main's form, two inputs) still
generate. A tiny random Qwen2 (q/k/v biases, grouped-query attention) with a bucket of
8 positions, so a short generation crosses several."""

from __future__ import annotations

import pytest
import torch

import edgeport
import edgeport.llm
from edgeport.backends.cpu import CpuBackend
from edgeport.llm import one_graph
from edgeport.llm.model import Step

from tiny_llms import tiny_model_dir

BUCKET = 8
MAX_SEQ_LEN = 40  # not a multiple of the bucket: the last window is the cache's end
CHUNK = 8


class WholeCacheStep(Step):
    """`Step` as main exported it before the window: (tokens, positions), attending over
    the whole cache."""

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = self.decoder(tokens, positions, any_length=True)
        last = (positions == positions.amax(0, keepdim=True)).to(h.dtype).view(-1, 1)
        return self.decoder.logits((h * last).sum(0, keepdim=True))


def whole_cache_methods(proto, chunk):
    """main's `one_graph.one_graph_methods`: no window input."""
    length = torch.export.Dim("chunk", min=1, max=chunk)
    inputs = (torch.zeros(1, chunk, dtype=torch.long), torch.arange(chunk))
    return {"prefill": (WholeCacheStep(proto), inputs, ({1: length}, {0: length}))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("hf"), "qwen2")


@pytest.fixture(scope="module")
def registry():
    from edgeport.testing import registry_for

    return registry_for(CpuBackend())


@pytest.fixture(scope="module")
def windowed(tiny, registry, tmp_path_factory):
    path = tmp_path_factory.mktemp("llm") / "windowed.edgeport"
    edgeport.llm.export(tiny[0], max_seq_len=MAX_SEQ_LEN, prefill_chunk=CHUNK, registry=registry).save(path)
    return path


@pytest.fixture(scope="module")
def whole_cache(tiny, registry, tmp_path_factory):
    """A program of main's form (exported as main did, saved and loaded)."""
    path = tmp_path_factory.mktemp("llm") / "whole.edgeport"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(one_graph, "one_graph_methods", whole_cache_methods)
        edgeport.llm.export(tiny[0], max_seq_len=MAX_SEQ_LEN, prefill_chunk=CHUNK, registry=registry).save(path)
    return path


@pytest.fixture
def small_bucket(monkeypatch):
    monkeypatch.setattr(one_graph, "WINDOW_BUCKET", BUCKET)


def run(path, registry, prompt, continuation, *, windows=None):
    """Logits after the prompt and after each continuation token, from a fresh session;
    ``windows`` collects the window length of each call."""
    session = edgeport.llm.Session(edgeport.load(path, registry=registry))
    if windows is not None:
        run_method = session.runtime.run

        def spy(method, inputs, *args):
            windows.append(len(inputs[2]) if len(inputs) == 3 else None)
            return run_method(method, inputs, *args)

        session.runtime.run = spy
    logits = [session.prefill(prompt, 0)] + [session.decode(t) for t in continuation]
    return torch.stack([torch.from_numpy(x.copy()) for x in logits])


def eager(model, prompt, continuation):
    with torch.no_grad():
        return model(torch.tensor([prompt + continuation])).logits[0, len(prompt) - 1:]


def test_the_program_takes_a_window_and_main_s_form_does_not(windowed, whole_cache, registry):
    plan = edgeport.load(windowed, registry=registry).manifest.methods["prefill"]
    old = edgeport.load(whole_cache, registry=registry).manifest.methods["prefill"]
    assert [i.name for i in plan.inputs] == ["tokens", "positions", "window"]
    assert one_graph.takes_window(plan) and one_graph.takes_any_length(plan)
    assert [i.name for i in old.inputs] == ["tokens", "positions"]
    assert not one_graph.takes_window(old) and one_graph.takes_any_length(old)


def test_window_lengths_round_up_to_the_bucket_and_stop_at_the_cache(small_bucket):
    assert [one_graph.window_length(s, MAX_SEQ_LEN) for s in (0, 1, 8, 9, 16, 17, 32, 33, 39)] == \
        [8, 8, 8, 16, 16, 24, 32, 40, 40]


def test_generation_across_bucket_boundaries_equals_the_whole_window(windowed, whole_cache, registry, tiny,
                                                                     small_bucket):
    """11 prompt tokens (chunks of 8 and 3), then decode from position 11 to 35: windows
    of 8 to 40 rows. The logits equal those of the same program given the whole cache
    as its window, main's whole-cache program, and Hugging Face's eager forward."""
    prompt, continuation = list(range(5, 16)), [(7 * i) % 90 + 2 for i in range(25)]
    windows: list[int | None] = []
    ours = run(windowed, registry, prompt, continuation, windows=windows)
    assert windows[:3] == [8, 8, 16] and windows[-1] == 40 and len(set(windows)) == 5  # 8, 16, 24, 32, 40
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(one_graph, "WINDOW_BUCKET", MAX_SEQ_LEN)  # every call reads the whole cache
        whole_window = run(windowed, registry, prompt, continuation)
    main_form = run(whole_cache, registry, prompt, continuation)
    assert torch.allclose(ours, whole_window, atol=1e-5, rtol=1e-5), (ours - whole_window).abs().max()
    assert torch.allclose(ours, main_form, atol=1e-5, rtol=1e-5), (ours - main_form).abs().max()
    reference = eager(tiny[1], prompt, continuation)
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4), (ours - reference).abs().max()


def test_a_prompt_that_ends_on_a_bucket_boundary(windowed, registry, tiny, small_bucket):
    """16 prompt tokens: the first decode reads exactly two full buckets (window 16, no
    row masked), the next one a third bucket."""
    prompt, continuation = list(range(10, 26)), [30, 31, 32]
    windows: list[int | None] = []
    ours = run(windowed, registry, prompt, continuation, windows=windows)
    assert windows == [8, 8, 16, 24, 24]
    reference = eager(tiny[1], prompt, continuation)
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4), (ours - reference).abs().max()


def test_a_prefill_chunk_that_crosses_a_bucket(windowed, registry, tiny, small_bucket):
    """A chat turn prefilled at position 5 with 8 tokens (positions 5..12, across the
    boundary at 8) reads a window of 8 rows, the first 5 filled; its own rows come from
    the chunk, not the cache."""
    session = edgeport.llm.Session(edgeport.load(windowed, registry=registry))
    first, second = list(range(5, 10)), list(range(40, 48))
    session.prefill(first, 0)
    ours = torch.from_numpy(session.prefill(second, len(first)).copy())
    reference = eager(tiny[1], first, second)[-1]
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4), (ours - reference).abs().max()


def test_main_s_programs_still_generate_the_same_tokens(windowed, whole_cache, registry):
    old = edgeport.llm.Session(edgeport.load(whole_cache, registry=registry))
    new = edgeport.llm.Session(edgeport.load(windowed, registry=registry))
    prompt = list(range(5, 16))
    tokens = [t.id for t in old.generate(prompt, max_new_tokens=20)]
    assert len(tokens) == 20 and tokens == [t.id for t in new.generate(prompt, max_new_tokens=20)]
