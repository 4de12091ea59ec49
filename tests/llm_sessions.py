"""Greedy generation through an LLM program's session, for the tests that compare a
backend's tokens and logits with another program's."""

from __future__ import annotations

from typing import Sequence

import numpy as np

import edgeport


def greedy(program: edgeport.Program, prompt: Sequence[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
    """``new_tokens`` greedy tokens after ``prompt``, and the logits that picked each."""
    session = edgeport.llm.Session(program)
    logits = [session.prefill(prompt, 0)]
    tokens = [int(logits[-1].argmax())]
    while len(tokens) < new_tokens:
        logits.append(session.decode(tokens[-1]))
        tokens.append(int(logits[-1].argmax()))
    return tokens, np.stack(logits)
