"""Decode speed of an LLM program on the cpu backend's two ways to run its model:
LiteRT's Interpreter (the model's bytes + XNNPACK's own packed weights) and LiteRT's
compiled model through its C API with XNNPACK's weight cache (what `edgeport llm`
runs now, `backends/tflite/compiled.py`), in one process, alternating.

    python bench/llm_compiled.py /tmp/llm-cm/smol-fp32.edgeport --blocks 8 --tokens 16

Both sessions prefill the same prompt; then, block by block, each decodes ``--tokens``
greedy tokens from where its cache is (rewound to the prompt at each block), A then B
then A... Each token's thread CPU time (XNNPACK at 1 thread runs in the calling
thread, so CPU time is the work, without the waiting a busy machine adds) is recorded;
reported are min / p10 / median per way, and whether their greedy tokens are equal.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import edgeport
from edgeport.backend import WEIGHT_CACHE_KEY
from edgeport.llm.session import Session


def session(path: str, compiled: bool) -> Session:
    program = edgeport.load(path)
    made = Session(program, threads=1)
    if not compiled:  # loaded as before: no weight cache asked, so the Interpreter runs it
        for artifact, info in program.manifest.artifacts.items():
            metadata = {k: v for k, v in info.metadata.items() if k != WEIGHT_CACHE_KEY}
            program.manifest.artifacts[artifact] = type(info)(**{**info.__dict__, "metadata": metadata})
    made.warm_up()
    return made


def decode_block(s: Session, prompt: list[int], tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens after ``prompt`` (its cache rewound to it) and each decode's CPU time."""
    logits = s.prefill(prompt, 0)
    out, times = [], []
    for _ in range(tokens):
        token = int(np.argmax(logits))
        out.append(token)
        t0 = time.thread_time()
        logits = s.decode(token)
        times.append(time.thread_time() - t0)
    return out, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("program")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    ways = {"interpreter": session(args.program, compiled=False),
            "compiled + weight cache": session(args.program, compiled=True)}
    for name, s in ways.items():
        (_, loaded), = s.runtime._loaded.items()  # noqa: SLF001 - which executable runs, for the record
        print(f"{name}: {type(loaded[0]).__name__}")
    prompt = next(iter(ways.values())).text.encode("The capital of France is")
    times: dict[str, list[float]] = {name: [] for name in ways}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.blocks):
        for name, s in ways.items():
            out, block = decode_block(s, prompt, args.tokens)
            tokens.setdefault(name, out)
            assert tokens[name] == out, f"{name}: greedy tokens changed between blocks"
            times[name].extend(block)
    print(f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"{args.blocks} blocks x {args.tokens} decode calls each, thread CPU time per token (ms):")
    for name, values in times.items():
        v = np.array(values) * 1e3
        print(f"  {name:>24}: min {v.min():.2f}  p10 {np.percentile(v, 10):.2f}  median {np.median(v):.2f}")
    first, second = tokens.values()
    print("greedy tokens equal:", first == second, first)


if __name__ == "__main__":
    main()
