"""Issue 16's engine table: decode and prefill tok/s, peak RSS and the memory-bandwidth bound
for edgeport (fp32, int8-dynamic, int4-weight), HF eager, ExecuTorch XNNPACK and llama.cpp.

    python bench/llm_table.py --edgeport /tmp/llmb/smol-{variant}.edgeport --gguf SmolLM2.Q4_1.gguf
        [--threads 1,2] [--pte-dir /work/bench-cache] [--gguf-dir /work/bench-cache] [--tokens 32]
        [--repeat 3] [--only edgeport:fp32,executorch:fp32]

Every engine runs in its own worker process (bench/llm_engines.py, with the interpreter of
its environment: ExecuTorch in /work/benchvenv, llama-cpp-python in /work/llamavenv), one
after the other: a 128-token prompt prefilled ``--repeat`` times, then ``--repeat`` blocks
of ``--tokens`` greedy decode steps; medians are reported. Peak RSS is the worker's own,
after all of that. Engines whose files are missing (a .pte not lowered yet, a GGUF not
re-encoded) are left out and named.

The bandwidth bound of a variant is (bytes of weights read per decoded token) / (memory
bandwidth measured here by copying a 256 MiB array): the decode speed no engine can pass
on this machine while the weights do not fit in cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENGINES = Path(__file__).resolve().parent / "llm_engines.py"
TEXT = ROOT / "tests" / "data" / "gettysburg_address.txt"
VENVS = {"executorch": "/work/benchvenv/bin/python", "llama.cpp": "/work/llamavenv/bin/python"}
PARAMETERS = 134_515_008
EMBEDDING = 49_152 * 576
# Bytes of weights each decoded token reads (the embedding gather reads one row; the head all).
WEIGHT_BYTES = {
    "fp32": PARAMETERS * 4,
    "int8-dynamic": PARAMETERS * 1.0,
    "int4-weight": (PARAMETERS - EMBEDDING) * (0.5 + 2 / 32) + EMBEDDING,
    "8da4w": PARAMETERS * (0.5 + 2 / 32),
    "Q4_1": PARAMETERS * 20 / 32,
    "Q8_0": PARAMETERS * 34 / 32,
    "F16": PARAMETERS * 2,
}


def bandwidth_gb_s() -> float:
    """Memory bandwidth by copying a 256 MiB array (read + write), best of 5."""
    a = np.ones(64 << 20, dtype=np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_engine(engine: str, path: str, threads: int, prompt: list[int], tokens: int, repeat: int) -> dict:
    python = VENVS.get(engine, sys.executable)
    worker = subprocess.Popen([python, str(ENGINES), "serve", "--engine", engine, "--path", path, "--threads",
                               str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)

    def ask(command: dict) -> dict:
        worker.stdin.write(json.dumps(command) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    ready = json.loads(worker.stdout.readline())
    prefill = [ask({"do": "prefill", "tokens": prompt})["seconds"] for _ in range(repeat)]
    decodes = [ask({"do": "decode", "prompt": prompt[:8], "n": tokens}) for _ in range(repeat)]
    rss = ask({"do": "rss"})["peak_rss_mb"]
    worker.stdin.write(json.dumps({"do": "quit"}) + "\n")
    worker.stdin.flush()
    worker.wait(timeout=60)
    return {"ready_s": ready["ready_s"], "prefill_tok_s": len(prompt) / statistics.median(prefill),
            "decode_tok_s": tokens / statistics.median(d["seconds"] for d in decodes),
            "ids": decodes[0]["ids"], "peak_rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edgeport", required=True, help="program path with {variant} in it")
    parser.add_argument("--gguf", required=True, help="the shipped SmolLM2 Q4_1 GGUF")
    parser.add_argument("--pte-dir", default="/work/bench-cache")
    parser.add_argument("--gguf-dir", default="/work/bench-cache")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", help="comma-separated engine:variant rows to run, e.g. edgeport:fp32,executorch:fp32")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import edgeport
    import edgeport.llm

    program = edgeport.load(args.edgeport.format(variant="fp32"))
    prompt = edgeport.llm.session_of(program).text.encode(TEXT.read_text())[:128]
    rows = [("edgeport", v, args.edgeport.format(variant=v)) for v in ("fp32", "int8-dynamic", "int4-weight")]
    rows += [("hf", "fp32", args.gguf)]
    rows += [("executorch", v, f"{args.pte_dir}/smol_et_{v}.pte") for v in ("fp32", "8da4w")]
    rows += [("llama.cpp", "Q4_1", args.gguf)]
    rows += [("llama.cpp", k, f"{args.gguf_dir}/smol-{k}.gguf") for k in ("Q8_0", "F16")]
    if args.only:
        wanted = set(args.only.split(","))
        rows = [row for row in rows if f"{row[0]}:{row[1]}" in wanted]
    bandwidth = bandwidth_gb_s()
    print(f"memory bandwidth (256 MiB copy): {bandwidth:.1f} GB/s", flush=True)
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for engine, variant, path in rows:
            if not Path(path).exists():
                print(f"skipped {engine} {variant}: {path} missing", flush=True)
                continue
            r = run_engine(engine, path, threads, prompt, args.tokens, args.repeat)
            bound = bandwidth * 1e9 / WEIGHT_BYTES[variant]
            results.append({"engine": engine, "variant": variant, "threads": threads, "bound_tok_s": bound, **r})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "ids"}), flush=True)
    print()
    print("| engine | weights | threads | decode tok/s | prefill tok/s (128) | peak RSS MB | bandwidth bound tok/s | first 8 ids |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['engine']} | {r['variant']} | {r['threads']} | {r['decode_tok_s']:.1f} | {r['prefill_tok_s']:.0f} | "
              f"{r['peak_rss_mb']:.0f} | {r['bound_tok_s']:.0f} | {r['ids'][:8]} |")


if __name__ == "__main__":
    main()
