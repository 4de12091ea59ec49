"""Which scheme for a transformer encoder on cpu: edgeport fp32, int8, int8-dynamic and
int4-weight against ExecuTorch's XNNPACK fp32, int8 and dynamic int8, in one run.

    python bench/quantize_schemes.py [--layers 4] [--seq 128] [--runs 60] [--threads 2]

Needs ExecuTorch next to torch 2.13, for the benchmark only (bench/cpu_vs_executorch.py
has the environment). The model is transformers' BertModel at BERT-base width (hidden
768, 12 heads, FFN 3072) with `--layers` layers and random weights, returning the last
hidden state for `--seq` token ids. Both sides quantize with torchao 0.18's PT2E on the
same 8 calibration batches of random ids; ExecuTorch with its XNNPACKQuantizer
(symmetric per-channel weights; `is_dynamic=True` for the dynamic form, whose linears'
inputs get their parameters at run time, as edgeport's int8-dynamic's do per token).

Per variant it prints latency (median and min over `--runs` calls, all variants
alternated in blocks of five so load changes hit all), the artifact size, and the SQNR
against eager float on 4 held-out inputs (random weights and ids: this measures what
each scheme's rounding costs, not a task's accuracy).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile

import torch

import edgeport
from edgeport.devtools.quant_check import sqnr_db

HERE = os.path.dirname(os.path.abspath(__file__))
EDGEPORT_SCHEMES = (None, "int8", "int8-dynamic", "int4-weight")


def load_bench(name: str):  # noqa: ANN201 - a module
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE = load_bench("cpu_vs_executorch")  # executorch_method
REFERENCE = load_bench("quantize_reference")  # alternate


class LastHidden(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(num_hidden_layers=layers, attn_implementation="sdpa"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids).last_hidden_state


def executorch_program(model: torch.nn.Module, inputs: tuple, batches: list, path: str, dynamic: bool | None) -> None:
    """fp32 (`dynamic` None), static int8 or dynamic int8, lowered to XNNPACK and saved."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, inputs)
    if dynamic is not None:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
        prepared = prepare_pt2e(exported.module(), XNNPACKQuantizer().set_global(config))
        with torch.no_grad():
            for batch in batches:
                prepared(*batch)
        exported = torch.export.export(convert_pt2e(prepared), inputs)
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    with open(path, "wb") as f:
        f.write(program.buffer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = LastHidden(args.layers).eval()
    vocab = model.bert.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = lambda: (torch.randint(0, vocab, (1, args.seq), generator=generator),)  # noqa: E731
    example, batches, held_out = ids(), [ids() for _ in range(8)], [ids() for _ in range(4)]
    with torch.no_grad():
        floats = [model(*x) for x in held_out]

    torch.set_num_threads(args.threads)
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)  # its default: every core
    calls, sizes, sqnr = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in EDGEPORT_SCHEMES:
            name = f"edgeport {scheme or 'fp32'}"
            kwargs = {"quantize": scheme, "calibration": batches} if scheme else {}
            program = edgeport.export(model, example, ["cpu"], options={"cpu": {"threads": args.threads}}, **kwargs)
            path = os.path.join(tmp, f"{scheme or 'fp32'}.edgeport")
            program.save(path)
            program = edgeport.load(path)
            sizes[name] = os.path.getsize(path)
            sqnr[name] = sqnr_db([program(*x) for x in held_out], floats)
            calls[name] = (lambda p: lambda: p(*example))(program)
        for name, dynamic in (("ExecuTorch fp32", None), ("ExecuTorch int8", False), ("ExecuTorch int8 dynamic", True)):
            path = os.path.join(tmp, name.replace(" ", "_") + ".pte")
            executorch_program(model, example, batches, path, dynamic)
            method = BASE.executorch_method(path)
            sizes[name] = os.path.getsize(path)
            sqnr[name] = sqnr_db([method.execute(list(x))[0] for x in held_out], floats)
            calls[name] = (lambda m: lambda: m.execute(list(example)))(method)
        latency = REFERENCE.alternate(calls, args.runs, __import__("time").perf_counter)

    print(f"\nBertModel, {args.layers} layers at BERT-base width, {args.seq} tokens, {args.threads} threads, "
          f"{args.runs} calls each (alternated)")
    print(f"  {'variant':26s} {'median ms':>10s} {'min ms':>8s} {'MB':>7s} {'SQNR dB':>8s}")
    for name, times in latency.items():
        print(f"  {name:26s} {statistics.median(times):10.2f} {min(times):8.2f} {sizes[name] / 1e6:7.1f} "
              f"{sqnr[name]:8.1f}")


if __name__ == "__main__":
    main()
