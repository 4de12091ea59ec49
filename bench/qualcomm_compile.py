"""qualcomm backend: compile time and placement per example model, on the QNN HTP simulator.

    python bench/qualcomm_compile.py [--models mobilenet_v2,resnet18,transformer_encoder,tiny_llama] [--soc SM8650]

For each model: edgeport.export end to end (torch.export, decomposition, ONNX export,
QNN HTP compile and placement check), the part of it spent in the backend's compile,
whether every node landed on QNN, and fp16 accuracy against eager (cosine, max abs).
Simulator run times are printed for completeness only: the HTP simulator is real QNN
code on the x86 CPU, and its timings say nothing about a Snapdragon device.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch

import edgeport
from edgeport.backends.qualcomm import QualcommBackend
from edgeport.testing import registry_for

HERE = os.path.dirname(os.path.abspath(__file__))


class TimedCompile(QualcommBackend):
    """The real backend, with the time spent in compile() added up."""

    compile_s = 0.0

    def compile(self, program, options):
        start = time.perf_counter()
        try:
            return super().compile(program, options)
        finally:
            TimedCompile.compile_s += time.perf_counter() - start


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet18,transformer_encoder,tiny_llama")
    parser.add_argument("--soc", default="SM8650")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("models", os.path.join(HERE, "..", "examples", "models.py"))
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    backend = TimedCompile()
    registry = registry_for(backend)
    print("| model | nodes | on QNN | export s | of which QNN compile s | cosine | max abs | simulator run s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, inputs = models.FACTORIES[name]()
        TimedCompile.compile_s = 0.0
        start = time.perf_counter()
        program = edgeport.export(model, inputs, ["qualcomm"], options={"qualcomm": {"soc": args.soc}},
                                  registry=registry)
        export_s = time.perf_counter() - start
        nodes = program.report()["nodes"]
        on_qnn = sum(n["backend"] == "qualcomm" for n in nodes)
        with torch.no_grad():
            expected, actual = model(*inputs), program(*inputs)
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                program(*inputs)
                runs.append(time.perf_counter() - start)
        print(f"| {name} | {len(nodes)} | {on_qnn}/{len(nodes)} | {export_s:.1f} | {TimedCompile.compile_s:.1f} | "
              f"{cosine(actual, expected):.6f} | {float((actual - expected).abs().max()):.1e} | "
              f"{statistics.median(runs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
