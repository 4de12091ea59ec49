"""SmolLM2-135M with int8-dynamic and int4-weight linears on cpu, real weights: placement,
size (the tied embedding stored once), and teacher-forced agreement with fp32.

The passage is the first 1,024 tokens of the Declaration of Independence (public
domain, tests/data), read in windows of the cache's 128 positions: each window is one
prefill of its first token and a decode per further token, so every position's logits
come from the program's own decode path. The fp32 reference is Hugging Face eager on
the same weights (the fp32 program equals it to 2e-3, test_smollm2.py), one forward
per window. Perplexity is over each window's next-token predictions.

Top-1 agreement is what issue 16 asks for, but on this passage it is a noisy figure:
reordering the attention's float sums (the cache window, 2026-11-26) left the KL
divergence from fp32 where it was (int8 0.0222 -> 0.0221, int4 0.0258 -> 0.0243) and
moved agreement by a point the other way (94.3% -> 93.2%, 93.1% -> 91.9%), because
5.6% of the positions have their top two fp32 logits within 0.1 (docs/llm.md "Limits").
So the steady guard is the KL divergence; the agreement floors leave a point for that
noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

import edgeport.llm

from conftest import DATA, MAX_SEQ_LEN

pytestmark = pytest.mark.slow

PASSAGE_TOKENS = 1024
FP32_BYTES = 134_515_008 * 4  # SmolLM2's parameters in fp32, lm_head tied to the embedding
EMBEDDING_BYTES = 49_152 * 576  # the tied table as int8: a second copy would add this


class Expected(NamedTuple):
    """Regression guards a little past what the programs give today (2026-11-29:
    int8-dynamic 93.2%, perplexity +1.8%, KL 0.0221; int4-weight 91.9%, +0.9%, KL 0.0243:
    outlier channels in float, and 4-bit groups holding the Q4_1 file's weights exactly).
    Issue 16 asks 98% and 90%; per-channel int8 weights cap int8 under 98% here: see
    docs/llm.md "Limits"."""

    least_agreement: float  # top-1 agreement with fp32
    most_ppl_increase: float
    most_kl: float  # KL divergence from fp32, per token
    most_size: float  # the program's bytes, as a share of fp32's weights


EXPECTED = {"int8-dynamic": Expected(0.92, 0.04, 0.025, 0.285), "int4-weight": Expected(0.90, 0.04, 0.027, 0.21)}


@pytest.fixture(scope="module")
def windows(smol) -> list[list[int]]:
    tokens = edgeport.llm.session_of(smol).text.encode((DATA / "declaration_of_independence.txt").read_text())
    assert len(tokens) >= PASSAGE_TOKENS
    return [tokens[i : i + MAX_SEQ_LEN] for i in range(0, PASSAGE_TOKENS, MAX_SEQ_LEN)]


@pytest.fixture(scope="module")
def fp32_logits(hf_smol, windows) -> torch.Tensor:
    model, _ = hf_smol
    with torch.no_grad():
        return torch.cat([model(torch.tensor([w])).logits[0] for w in windows])


def teacher_forced(program: edgeport.Program, windows: list[list[int]]) -> torch.Tensor:
    session = edgeport.llm.Session(program)
    rows = []
    for window in windows:
        rows.append(session.prefill(window[:1], 0))
        rows += [session.decode(token) for token in window[1:]]
    return torch.stack([torch.from_numpy(r) for r in rows])


def perplexity(logits: torch.Tensor, windows: list[list[int]]) -> float:
    """exp(mean cross-entropy) of each window's next tokens."""
    losses = []
    for i, window in enumerate(windows):
        rows = logits[i * MAX_SEQ_LEN : i * MAX_SEQ_LEN + len(window) - 1]
        losses.append(torch.nn.functional.cross_entropy(rows.float(), torch.tensor(window[1:]), reduction="sum"))
    return math.exp(float(sum(losses)) / sum(len(w) - 1 for w in windows))


@pytest.mark.parametrize("scheme", list(EXPECTED))
def test_quantized_programs_lower_whole_to_cpu_and_store_the_tied_table_once(quantized_smol, scheme):
    program = quantized_smol(scheme)
    for method in ("prefill", "decode"):
        assert {n["backend"] for n in program.report(method)["nodes"]} == {"cpu"}
        assert [s.kind for s in program.manifest.methods[method].steps] == ["delegate"]
    meta = program.manifest.metadata["llm"]
    assert meta["weights"] == scheme
    [path] = program.manifest.artifacts  # one model that both methods run
    size = len(program.files[path])
    assert meta["weight_bytes"] < size < meta["weight_bytes"] + EMBEDDING_BYTES // 4  # rope tables etc. on top
    assert size < EXPECTED[scheme].most_size * FP32_BYTES


@pytest.mark.parametrize("scheme", list(EXPECTED))
def test_teacher_forced_top1_agreement_with_fp32_and_the_perplexity_delta(quantized_smol, windows, fp32_logits, scheme):
    expected = EXPECTED[scheme]
    ours = teacher_forced(quantized_smol(scheme), windows)
    agreement = float((ours.argmax(-1) == fp32_logits.argmax(-1)).float().mean())
    ppl, fp32_ppl = perplexity(ours, windows), perplexity(fp32_logits, windows)
    kl = float(torch.nn.functional.kl_div(torch.log_softmax(ours.float(), -1), torch.log_softmax(fp32_logits, -1),
                                          log_target=True, reduction="batchmean"))
    print(f"\n{scheme}: top-1 agreement with fp32 {agreement:.2%} over {len(ours)} tokens; "
          f"perplexity {ppl:.3f} vs fp32 {fp32_ppl:.3f} ({ppl / fp32_ppl - 1:+.2%}); KL from fp32 {kl:.4f}")
    assert agreement >= expected.least_agreement
    assert ppl <= fp32_ppl * (1 + expected.most_ppl_increase)
    assert kl <= expected.most_kl
