"""The engines bench/llm.py compares, each driven the same way from its own process.

Each engine lives in its own environment (ExecuTorch only in the benchmark venv,
llama-cpp-python only in its own), so bench/llm.py starts one worker process per
(engine, variant, threads) with the right interpreter and talks to it over stdin/stdout,
one JSON object a line:

    {"do": "prefill", "tokens": [...]}      -> {"seconds": s}          (cache reset first)
    {"do": "decode", "prompt": [...], "n": N} -> {"seconds": s, "ids": [...]}   (N greedy steps)
    {"do": "rss"}                           -> {"peak_rss_mb": m}
    {"do": "quit"}

This file imports no engine at module level, and nothing from edgeport, so any of the
three interpreters can run it. Every engine decodes greedily from its own logits, with its
own KV cache, one token per call: what a chat application does.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def peak_rss_mb() -> float:
    """This worker's own peak RSS: Linux's VmHWM starts afresh at exec, while ru_maxrss
    keeps the peak of the process that forked it (the bench driver)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gguf_dir_and_name(gguf: str) -> tuple[str, str]:
    path = Path(gguf)
    return str(path.parent), path.name


# -- edgeport ---------------------------------------------------------------------------------


class EdgeportEngine:
    """An edgeport LLM program (any variant), through `edgeport.llm.Session`."""

    def __init__(self, program: str, threads: int) -> None:
        import edgeport
        import edgeport.llm

        self.session = edgeport.llm.Session(edgeport.load(program), threads=threads)
        self.session.warm_up()

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        return self.session.prefill(list(tokens), 0)

    def decode(self, token: int) -> np.ndarray:
        return self.session.decode(token)


# -- Hugging Face transformers eager --------------------------------------------------------------


class HfEngine:
    """HF eager fp32 with its own dynamic KV cache (``past_key_values``), as ``generate`` runs it."""

    def __init__(self, gguf: str, threads: int) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        directory, name = gguf_dir_and_name(gguf)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name).eval()
        self.past = None

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([list(tokens)]), use_cache=True)
        self.past = out.past_key_values
        return out.logits[0, -1].numpy()

    def decode(self, token: int) -> np.ndarray:
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([[token]]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0, -1].numpy()


# -- ExecuTorch -----------------------------------------------------------------------------------


def executorch_export(gguf: str, variant: str, out: str, max_seq_len: int) -> dict[str, float]:
    """Export SmolLM2 as an ExecuTorch XNNPACK program: transformers' static-cache exportable
    module (`TorchExportableModuleForDecoderOnlyLM`), one ``forward`` with a dynamic
    number of tokens (prefill and decode), fp32 or 8da4w (torchao's
    `Int8DynamicActivationIntxWeightConfig`, int4 weights in groups of 32, as
    ExecuTorch's own llama export does it)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    start = time.perf_counter()
    cpu0 = time.process_time()
    directory, name = gguf_dir_and_name(gguf)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    model.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static", cache_config={"batch_size": 1, "max_cache_len": max_seq_len})
    if variant == "8da4w":
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
        from torchao.quantization.granularity import PerGroup

        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie: quantize the head only
        quantize_(model, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)),
                  filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and m.weight.shape[1] % 32 == 0)
    elif variant != "fp32":
        raise SystemExit(f"unknown ExecuTorch variant {variant}")
    module = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_seq_len)
    seq = torch.export.Dim("seq", min=1, max=max_seq_len - 1)
    with torch.no_grad():
        exported = module.export(input_ids=torch.zeros(1, 2, dtype=torch.long), cache_position=torch.arange(2),
                                 dynamic_shapes={"input_ids": {1: seq}, "cache_position": {0: seq}}, strict=True)
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False,
                                                                            _skip_dim_order=True))
        program = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))
    Path(out).write_bytes(program.buffer)
    return {"export_wall_s": time.perf_counter() - start, "export_cpu_s": time.process_time() - cpu0,
            "file_mb": Path(out).stat().st_size / 1e6}


class ExecutorchEngine:
    """An ExecuTorch .pte from `executorch_export`, through ExecuTorch's Python runtime."""

    def __init__(self, pte: str, threads: int) -> None:
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(threads)  # noqa: SLF001 - the documented way to set threads
        self.torch = torch
        self.method = Runtime.get().load_program(pte).load_method("forward")
        self.position = 0

    def _run(self, tokens: Sequence[int]) -> np.ndarray:
        n = len(tokens)
        ids = self.torch.tensor([list(tokens)], dtype=self.torch.long)
        positions = self.torch.arange(self.position, self.position + n, dtype=self.torch.long)
        logits = self.method.execute((ids, positions))[0]
        self.position += n
        return logits[0, -1].numpy()

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        self.position = 0  # the static cache is positioned by cache_position: no reset needed
        return self._run(tokens)

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])


# -- llama.cpp --------------------------------------------------------------------------------------


def _llama_cpp():
    """llama_cpp with its model defaults patched to ``use_extra_bufts=False``: the native
    build puts Q4/Q8 weights into AMX buffers and segfaults on the first decode here."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    defaults = llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
    return llama_cpp


def llama_cpp_requantize(gguf: str, out: str, kind: str) -> dict[str, float]:
    """Re-encode the shipped GGUF's weights as Q8_0 or F16 with llama.cpp's own quantizer
    (`llama_model_quantize`; the Q4_1 values are dequantized, then encoded)."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[kind]
    params.allow_requantize = True
    params.nthread = 2
    start = time.perf_counter()
    code = llama_cpp.llama_model_quantize(gguf.encode(), out.encode(), params)
    if code != 0:
        raise SystemExit(f"llama_model_quantize failed with {code}")
    return {"quantize_s": time.perf_counter() - start, "file_mb": Path(out).stat().st_size / 1e6}


class LlamaCppEngine:
    """A GGUF file through llama-cpp-python, one token per ``llama_decode``."""

    def __init__(self, gguf: str, threads: int, max_seq_len: int = 512) -> None:
        llama_cpp = _llama_cpp()
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=max_seq_len, n_batch=max_seq_len, n_ubatch=max_seq_len,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        self.vocab = self.llm.n_vocab()

    def _logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,)).copy()  # noqa: SLF001

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(tokens))
        return self._logits()

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._logits()


# -- the worker loop ------------------------------------------------------------------------------------


def make_engine(engine: str, path: str, threads: int) -> Any:
    if engine == "edgeport":
        return EdgeportEngine(path, threads)
    if engine == "hf":
        return HfEngine(path, threads)
    if engine == "executorch":
        return ExecutorchEngine(path, threads)
    if engine == "llama.cpp":
        return LlamaCppEngine(path, threads)
    raise SystemExit(f"unknown engine {engine}")


def serve(engine: str, path: str, threads: int) -> None:
    """Load the engine, warm it up, then answer commands on stdin until "quit"."""
    start = time.perf_counter()
    runner = make_engine(engine, path, threads)
    runner.decode(int(np.argmax(runner.prefill([1, 2, 3]))))  # first calls (weights packed, buffers allocated)
    print(json.dumps({"ready_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["do"] == "quit":
            break
        if command["do"] == "prefill":
            t0 = time.perf_counter()
            runner.prefill(command["tokens"])
            reply = {"seconds": time.perf_counter() - t0}
        elif command["do"] == "decode":
            token = int(np.argmax(runner.prefill(command["prompt"])))
            ids = [token]
            t0 = time.perf_counter()
            for _ in range(command["n"]):
                token = int(np.argmax(runner.decode(token)))
                ids.append(token)
            reply = {"seconds": time.perf_counter() - t0, "ids": ids}
        else:
            reply = {"peak_rss_mb": peak_rss_mb()}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="one engine of bench/llm.py (see its --help)")
    parser.add_argument("job", choices=["serve", "executorch-export", "llama-requantize"])
    parser.add_argument("--engine")
    parser.add_argument("--path", required=True, help="program, .pte or .gguf file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant")
    parser.add_argument("--out")
    parser.add_argument("--max-seq-len", type=int, default=512)
    args = parser.parse_args()
    if args.job == "serve":
        serve(args.engine, args.path, args.threads)
    elif args.job == "executorch-export":
        print(json.dumps(executorch_export(args.path, args.variant, args.out, args.max_seq_len)))
    else:
        print(json.dumps(llama_cpp_requantize(args.path, args.out, args.variant)))
