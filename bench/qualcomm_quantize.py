"""qualcomm int8 and a16w8: quantization and compile cost, and the simulator against the
fake-quantized reference, per example model.

    python bench/qualcomm_quantize.py [--models mobilenet_v2] [--schemes int8,a16w8] [--batches 8]

For each model and scheme: edgeport.export with quantization (capture, place, calibrate
on `examples/calibration.py:random_images`, convert, QDQ ONNX export, QNN HTP compile,
placement check), the time per calibration batch, the part spent in the backend's
compile, whether every node landed on QNN, then the HTP simulator's output against the
fake-quantized torch reference of the same program (the number the issue asks >= 0.999)
and against the float model (the scheme's own error). Random calibration measures cost
only; tests/quantize/test_digits_accuracy.py measures accuracy on real data.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

import edgeport
from edgeport.testing import registry_for
from edgeport.testing.quantized_cases import reference_program

from qualcomm_compile import TimedCompile, cosine  # noqa: E402 - this directory's sibling bench

HERE = os.path.dirname(os.path.abspath(__file__))


def load_example(name: str):  # noqa: ANN201 - a module
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "..", "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2")
    parser.add_argument("--schemes", default="int8,a16w8")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    models, calibration = load_example("models"), load_example("calibration")
    registry = registry_for(TimedCompile())
    print("| model | scheme | on QNN | export s | calibration ms/batch | of which QNN compile s | "
          "cosine vs fake-quant | cosine vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, inputs = models.FACTORIES[name]()
        for scheme in args.schemes.split(","):
            TimedCompile.compile_s = 0.0
            start = time.perf_counter()
            program = edgeport.export(model, inputs, ["qualcomm"], quantize=scheme, keep_reference=True,
                                      calibration=calibration.random_images(args.batches), registry=registry)
            export_s = time.perf_counter() - start
            nodes = program.report()["nodes"]
            on_qnn = sum(n["backend"] == "qualcomm" for n in nodes)
            per_batch = program.manifest.report["forward"]["quantization"]["calibration"]["ms_per_batch"]
            with torch.no_grad():
                htp, reference, floating = program(*inputs), reference_program(program)(*inputs), model(*inputs)
            print(f"| {name} | {scheme} | {on_qnn}/{len(nodes)} | {export_s:.1f} | {per_batch:.0f} | "
                  f"{TimedCompile.compile_s:.1f} | {cosine(htp, reference):.6f} | {cosine(htp, floating):.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
