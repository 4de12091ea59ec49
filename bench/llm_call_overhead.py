"""What a Python decode call costs outside LiteRT: the runtime and session around it.

    python bench/llm_call_overhead.py PROGRAM [--calls 400] [--blocks 5]

Issue 16 asks for the per-token overhead outside the delegate. Timed around the whole
call it drowns in the ~9 ms LiteRT spends, and a loaded machine moves that by more than
the overhead itself. So the model's run is replaced by a call that does nothing, and
each decode call is timed by the calling thread's CPU time: everything edgeport does
per token (inputs, the prefix views of 60 cache states, binding, 61 outputs, 60 row
writes, the logits row) and nothing LiteRT does. The session is reset by a prefill at
position 0 before each block, so positions stay inside the cache.
"""

from __future__ import annotations

import argparse
import statistics
import time

import edgeport
import edgeport.llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program")
    parser.add_argument("--calls", type=int, default=400, help="decode calls per block")
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    program = edgeport.load(args.program)
    session = edgeport.llm.Session(program)
    prompt = session.text.encode("The capital of France is")
    session.prefill(prompt, 0)
    executables = [loaded for loaded, _ in session.runtime._loaded.values()]
    if len(executables) != 1 or not hasattr(executables[0], "_model"):
        raise SystemExit("expects a cpu LLM program of the one-graph form (one compiled model)")
    executables[0]._model.run_handles = lambda *handles: None  # LiteRT's run, left out
    per_call = []
    for _ in range(args.blocks):
        session.prefill(prompt, 0)
        start = time.thread_time()
        for _ in range(args.calls):
            session.decode(0)
        per_call.append((time.thread_time() - start) / args.calls * 1e6)
    print(f"{args.program}: outside LiteRT, thread CPU per decode call: median {statistics.median(per_call):.0f} us, "
          f"min {min(per_call):.0f} (blocks of {args.calls}: {', '.join(f'{t:.0f}' for t in per_call)})")


if __name__ == "__main__":
    main()
