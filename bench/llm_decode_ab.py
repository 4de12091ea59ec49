"""Decode cost of several LLM programs, alternating in one process: thread CPU time per token.

    python bench/llm_decode_ab.py A.edgeport B.edgeport [...] [--blocks 8] [--tokens 24] [--ops]
        [--context 16 128 400]

On a shared machine wall time swings with the load; at 1 thread XNNPACK runs in the
calling thread, so that thread's CPU time is what a token costs the program itself. The
programs take turns in short blocks (an 8-token prompt, then ``--tokens`` greedy decode
steps each timed alone), so a load change hits them alike; min / p10 / median per token
are printed, with each one's ratio to the first program and the load average. ``--ops``
also prints each program's operators by type (deterministic: what a token runs).

The first program loaded in a process decoded 10-15% slower than the same file loaded
after it (2026-11-26, LiteRT 2.3; cause not found), so a copy of the first program is
loaded and warmed up before the timed ones, and never timed.

``--context N ...``: decode from position N (each in its own blocks): the cost of a
step that reads a cache filled to N (a program reading only the filled rows, `one_graph`'s
window, gets cheaper the shorter N). Past the 8-token prompt the rows hold whatever an
earlier block left there: a step's cost does not depend on their values.
``--prefill N`` also times an N-token prompt's prefill per block; each program's 32
greedy tokens after `PROMPT` are compared with the first program's.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
import zipfile

import numpy as np

PROMPT = [504, 3458, 282, 4649, 314, 1345, 30, 198]  # any 8 ids: the cost does not depend on them


def decode_times(session, tokens: int, context: int = len(PROMPT)) -> list[float]:
    """ms of thread CPU time per greedy decode step after `PROMPT`, from position ``context``."""
    session.tokens = []
    token = int(np.argmax(session.prefill(PROMPT, 0)))
    session.tokens += [0] * (context - len(PROMPT))  # rows the cache is taken to hold
    times = []
    for _ in range(tokens):
        start = time.thread_time_ns()
        logits = session.decode(token)
        times.append((time.thread_time_ns() - start) / 1e6)
        token = int(np.argmax(logits))
    return times


def prefill_times(sessions, tokens: int, blocks: int) -> list[list[float]]:
    """ms of thread CPU time of a ``tokens``-token prefill, per session, once per block
    (the sessions take turns, so a load change hits them alike)."""
    prompt = (PROMPT * (tokens // len(PROMPT) + 1))[:tokens]
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(blocks):
        for session, own in zip(sessions, times):
            start = time.thread_time_ns()
            session.prefill(prompt, 0)
            own.append((time.thread_time_ns() - start) / 1e6)
    return times


def report(paths: list[str], times: list[list[float]], what: str) -> None:
    base = np.median(times[0])
    print(f"{what}; load average (1 min) {os.getloadavg()[0]:.1f}")
    for path, own in zip(paths, times):
        t = np.array(own)
        print(f"  {path}: min {t.min():.2f}  p10 {np.percentile(t, 10):.2f}  median {np.median(t):.2f}"
              f"  ({np.median(t) / base:.3f}x the first)", flush=True)


def operators(path: str) -> collections.Counter:
    """Operators by type in the program's TFLite artifacts."""
    from ai_edge_litert.interpreter import Interpreter

    counts: collections.Counter = collections.Counter()
    with zipfile.ZipFile(path) as program:
        for name in program.namelist():
            if name.endswith(".tflite"):
                ops = Interpreter(model_content=program.read(name))._get_ops_details()
                counts.update(op["op_name"] for op in ops)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("programs", nargs="+")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--ops", action="store_true")
    parser.add_argument("--context", type=int, nargs="+", default=[len(PROMPT)],
                        help=f"decode from these positions (at least {len(PROMPT)}), each timed apart")
    parser.add_argument("--prefill", type=int, default=0, help="also time a prefill of this many tokens")
    args = parser.parse_args()
    import edgeport
    import edgeport.llm

    if args.ops:
        for path in args.programs:
            counts = operators(path)
            print(f"{path}: {sum(counts.values())} operators: {dict(counts.most_common())}")
    pacer = edgeport.llm.Session(edgeport.load(args.programs[0]), threads=1)
    pacer.warm_up()  # the first program loaded runs slower: not one of the timed ones
    sessions = [edgeport.llm.Session(edgeport.load(path), threads=1) for path in args.programs]
    for session in sessions:
        session.warm_up()
    greedy = [[t.id for t in session.generate(PROMPT, max_new_tokens=32)] for session in sessions]
    for path, ids in zip(args.programs, greedy):
        print(f"  {path}: 32 greedy tokens {'equal' if ids == greedy[0] else 'DIFFER from'} the first's", flush=True)
    if args.prefill:
        report(args.programs, prefill_times(sessions, args.prefill, args.blocks),
               f"prefill of {args.prefill} tokens: ms of thread CPU time per prefill, {args.blocks} blocks")
    for context in args.context:
        times: list[list[float]] = [[] for _ in sessions]
        loads = [os.getloadavg()[0]]
        for _ in range(args.blocks):
            for session, own in zip(sessions, times):
                own.extend(decode_times(session, args.tokens, context))
            loads.append(os.getloadavg()[0])
        report(args.programs, times, f"context {context}: ms of thread CPU time per decoded token, "
                                     f"{args.blocks} blocks x {args.tokens} (load from {min(loads):.1f})")


if __name__ == "__main__":
    main()
