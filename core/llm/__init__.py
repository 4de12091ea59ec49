"""``edgeport.llm``: a Llama-family LLM as one program with ``prefill`` and ``decode``.

    import edgeport.llm

    program = edgeport.llm.export("SmolLM2-135M-Instruct.Q4_1.gguf", max_seq_len=512)
    program.save("smol.edgeport")
    for token in edgeport.llm.generate("smol.edgeport", "The capital of France is"):
        print(token.text, end="", flush=True)

The program carries its tokenizer and chat template; running it needs the
``tokenizers`` library, not transformers, nor torch: generating imports no torch
(`export` and `load_model`, the compile side, import it when first used). See docs/llm.md.
"""

from __future__ import annotations

import os

from ..lazy import imported_on_first_use
from ..program import Program, load
from .sampling import Sampling
from .session import Generation, GenerationStats, PromptTooLong, Session, Token, session_of
from .text import Message, NotAnLLMProgram


# The compile side: name -> the module that defines it, imported on first use (it imports torch).
_COMPILE_SIDE = {"export": ".export", "LoadedModel": ".loader", "load_model": ".loader"}


__getattr__ = imported_on_first_use(__name__, _COMPILE_SIDE)


def generate(
    program: Program | str | os.PathLike[str],
    prompt: str,
    *,
    chat: bool = False,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    threads: int | None = None,
) -> Generation:
    """Stream the continuation of ``prompt`` (or, with ``chat``, the assistant's reply to
    it as a user message) as `Token`s; the returned `Generation`'s ``stats`` is set when
    it ends. Greedy unless ``temperature`` > 0."""
    if not isinstance(program, Program):
        program = load(program)
    session = session_of(program, threads)
    sampling = Sampling(temperature, top_p, seed)
    if chat:
        return session.chat([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, sampling=sampling)
    return session.generate(prompt, max_new_tokens=max_new_tokens, sampling=sampling)


__all__ = [
    "Generation",
    "GenerationStats",
    "LoadedModel",
    "Message",
    "NotAnLLMProgram",
    "PromptTooLong",
    "Sampling",
    "Session",
    "Token",
    "export",
    "generate",
    "load_model",
    "session_of",
]
