"""The cpu LLM program's cache window bucket (`one_graph.WINDOW_BUCKET`): decode cost per
token over a long run for several bucket sizes, alternating in one process.

    python bench/llm_window_bucket.py PROGRAM.edgeport [--buckets 16 32 64 128] [--tokens 192] [--blocks 3]

A smaller bucket reads fewer masked rows per step, but the model is resized (~0.7 ms of
CPU for SmolLM2) each time generation crosses one. Each block decodes ``--tokens``
greedy steps from position 8 with each bucket in turn (the same program: the bucket is
the session's choice); printed is the thread CPU time per token, its median over blocks
and the total, with 1 thread (XNNPACK runs in the calling thread).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

PROMPT = [504, 3458, 282, 4649, 314, 1345, 30, 198]


def run(session, tokens: int) -> float:
    """ms of thread CPU time for ``tokens`` greedy decode steps after `PROMPT`."""
    session.tokens = []
    token = int(np.argmax(session.prefill(PROMPT, 0)))
    start = time.thread_time_ns()
    for _ in range(tokens):
        token = int(np.argmax(session.decode(token)))
    return (time.thread_time_ns() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program")
    parser.add_argument("--buckets", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--tokens", type=int, default=192)
    parser.add_argument("--blocks", type=int, default=3)
    args = parser.parse_args()
    import edgeport
    import edgeport.llm
    from edgeport.llm import one_graph

    session = edgeport.llm.Session(edgeport.load(args.program), threads=1)
    session.warm_up()
    totals: dict[int, list[float]] = {b: [] for b in args.buckets}
    for _ in range(args.blocks):
        for bucket in args.buckets:
            one_graph.WINDOW_BUCKET = bucket
            totals[bucket].append(run(session, args.tokens))
    print(f"load average (1 min) {os.getloadavg()[0]:.1f}; {args.tokens} decode steps from position {len(PROMPT)}, "
          f"{args.blocks} blocks")
    for bucket, own in totals.items():
        print(f"  bucket {bucket}: {np.median(own) / args.tokens:.3f} ms per token (median of blocks; "
              f"min {min(own) / args.tokens:.3f})")


if __name__ == "__main__":
    main()
