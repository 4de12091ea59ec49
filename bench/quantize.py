"""MobileNetV2 int8 on cpu against our fp32 and ExecuTorch XNNPACK int8, in one run.

    python bench/quantize.py [--models mobilenet_v2] [--runs 200] [--batches 8] [--threads 2] [--aeq-python PY] [--walk] [--clock cpu]

Needs ExecuTorch next to torch 2.13, for the benchmark only (see bench/cpu_vs_executorch.py
for the environment). Both sides get the same calibration batches (random images: this
measures speed and cost, not accuracy) and the same PT2E machinery (torchao 0.18);
ExecuTorch quantizes with its XNNPACKQuantizer (symmetric, per-channel weights) and
lowers with to_edge_transform_and_lower + to_executorch.

Per model it prints:
- calibration time per batch (edgeport's observers: min/max);
- lowering time after calibration: edgeport's convert + capture of the Q/DQ graph +
  partition + compile + save, against ExecuTorch's convert + torch.export + lower +
  to_executorch, both from the calibrated model;
- artifact size, int8 against fp32;
- latency (median, p10, min) of edgeport int8, edgeport fp32 and ExecuTorch int8,
  alternated in short blocks so load changes hit all three; and of the same int8 program
  given its input in place (`Program.input_buffers`: the image written into the
  interpreter's own input buffer once, as ExecuTorch reads the caller's tensor where it
  lies), so the float image's copy into the interpreter is not in its calls;
- each int8 result's distance from the float model (max abs error / max abs output).

With --clock cpu every engine runs on 1 thread (XNNPACK then works on the calling thread
alone) and each call is timed by that thread's CPU time: what the model costs, barely
moved by other work on a shared machine, where wall times move by 2x.

With --walk another call joins the alternation: the same int8 program through the generic plan walk
(`Program.run`) instead of the direct call `program(x)` takes for a one-step method.

With --aeq-python (a python whose environment has ai-edge-quantizer, see
bench/quantize_reference.py) a fourth model joins the alternation: ai-edge-quantizer's
`static_wi8_ai8` of our fp32 .tflite, run by LiteRT as issue 14's anchor was, on an
int8 input set directly (no float input to copy in, no QUANTIZE or DEQUANTIZE).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time

import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import registry_for

HERE = os.path.dirname(os.path.abspath(__file__))


def load_bench(name: str):  # noqa: ANN201 - a module
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE = load_bench("cpu_vs_executorch")  # load_models, executorch_method, timed
REFERENCE = load_bench("quantize_reference")  # aeq_python, quantize_with_aeq, runner, alternate


def edgeport_int8(model, inputs, batches, threads: int, path: str) -> dict[str, float]:
    """Export int8 and save; phase times from the export's own progress lines."""
    marks: list[tuple[float, str]] = []
    start = time.perf_counter()
    program = edgeport.export(model, inputs, ["cpu"], quantize="int8", calibration=batches,
                              options={"cpu": {"threads": threads}}, registry=registry_for(CpuBackend()),
                              progress=lambda line: marks.append((time.perf_counter(), line)))
    program.save(path)
    end = time.perf_counter()
    converted = next(t for t, line in marks if line.startswith("converting"))
    report = program.manifest.report["forward"]["quantization"]
    return {"total": end - start, "lower": end - converted,
            "ms_per_batch": report["calibration"]["ms_per_batch"]}


def executorch_int8(model, inputs, batches, path: str) -> dict[str, float]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    start = time.perf_counter()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, inputs).module(), quantizer)
    calibrated = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            prepared(*batch)
    lowering = time.perf_counter()
    converted = convert_pt2e(prepared)
    program = to_edge_transform_and_lower(torch.export.export(converted, inputs),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    with open(path, "wb") as f:
        f.write(program.buffer)
    end = time.perf_counter()
    return {"total": end - start, "lower": end - lowering,
            "ms_per_batch": 1e3 * (lowering - calibrated) / len(batches)}


def distance(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def measure(name: str, factory, args, tmp: str) -> None:
    model, inputs = factory()
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(torch.randn(x.shape, generator=generator) for x in inputs) for _ in range(args.batches)]
    ours8, ours32, theirs8 = (os.path.join(tmp, f"{name}.{s}") for s in ("int8.edgeport", "fp32.edgeport", "int8.pte"))
    ep = edgeport_int8(model, inputs, batches, args.threads, ours8)
    edgeport.export(model, inputs, ["cpu"], options={"cpu": {"threads": args.threads}},
                    registry=registry_for(CpuBackend())).save(ours32)
    et = executorch_int8(model, inputs, batches, theirs8)
    int8, fp32 = edgeport.load(ours8), edgeport.load(ours32)
    size = {k: sum(len(d) for p, d in prog.files.items() if p.endswith(".tflite")) for k, prog in
            (("int8", int8), ("fp32", fp32))}
    torch.set_num_threads(args.threads)
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)  # its default: every core
    method = BASE.executorch_method(theirs8)
    x = inputs[0]
    calls = {"edgeport int8": lambda: int8(x), "edgeport fp32": lambda: fp32(x), "ExecuTorch int8": lambda: method.execute([x])}
    (in_place,) = int8.input_buffers()  # the same interpreter: `int8(x)` copies x into this buffer
    in_place.copy_(x)
    calls["edgeport int8, input in place"] = lambda: int8(in_place)
    if args.walk:  # the same program called through the generic plan walk (`Program.run`)
        calls["edgeport int8 walk"] = lambda: int8.run(x).outputs
    python = REFERENCE.aeq_python(args.aeq_python) if args.aeq_python else None
    if args.aeq_python and not python:
        print(f"  ai-edge-quantizer does not import under {args.aeq_python}: its model is left out")
    if python:
        float_model = os.path.join(tmp, f"{name}.fp32.tflite")
        with open(float_model, "wb") as f:
            f.write(next(d for p, d in fp32.files.items() if p.endswith(".tflite")))
        REFERENCE.quantize_with_aeq(python, float_model, batches, os.path.join(tmp, f"{name}.aeq.tflite"))
        calls["ai-edge-quantizer int8"] = REFERENCE.runner(os.path.join(tmp, f"{name}.aeq.tflite"), args.threads)
    lat = REFERENCE.alternate(calls, args.runs, time.thread_time if args.clock == "cpu" else time.perf_counter)
    with torch.no_grad():
        eager = model(x)
    print(f"\n{name} ({args.batches} random calibration batches, {args.threads} threads, "
          f"{'CPU time of the calling thread' if args.clock == 'cpu' else 'wall time'})")
    print(f"  calibration: edgeport {ep['ms_per_batch']:.0f} ms/batch, ExecuTorch {et['ms_per_batch']:.0f} ms/batch")
    print(f"  lowering after calibration: edgeport {ep['lower']:.2f} s, ExecuTorch {et['lower']:.2f} s "
          f"({ep['lower'] / et['lower']:.2f}x)")
    print(f"  artifact: int8 {size['int8'] / 1e6:.2f} MB, fp32 {size['fp32'] / 1e6:.2f} MB "
          f"({size['int8'] / size['fp32']:.2f}x); ExecuTorch int8 {os.path.getsize(theirs8) / 1e6:.2f} MB")
    stats = {k: (statistics.median(v), statistics.quantiles(v, n=10)[0], min(v)) for k, v in lat.items()}
    for k, (med, p10, low) in stats.items():
        print(f"  {k:30s} median {med:6.2f} ms  p10 {p10:6.2f}  min {low:6.2f}")
    ours, fp, theirs = stats["edgeport int8"], stats["edgeport fp32"], stats["ExecuTorch int8"]
    print("  edgeport int8 / edgeport fp32: " + "  ".join(f"{a / b:.2f}" for a, b in zip(ours, fp)) + " (median p10 min)")
    print("  edgeport int8 / ExecuTorch int8: " + "  ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs)))
    print("  edgeport int8 with its input in place / ExecuTorch int8: "
          + "  ".join(f"{a / b:.2f}" for a, b in zip(stats["edgeport int8, input in place"], theirs)))
    if "ai-edge-quantizer int8" in stats:
        aeq = stats["ai-edge-quantizer int8"]
        print("  ai-edge-quantizer int8 (int8 in/out) / ExecuTorch int8: "
              + "  ".join(f"{a / b:.2f}" for a, b in zip(aeq, theirs)))
    if "edgeport int8 walk" in stats:
        print("  edgeport int8 through the plan walk / ExecuTorch int8: "
              + "  ".join(f"{a / b:.3f}" for a, b in zip(stats["edgeport int8 walk"], theirs))
              + "  (direct call: " + "  ".join(f"{a / b:.3f}" for a, b in zip(ours, theirs)) + ")")
    print(f"  distance from float: edgeport int8 {distance(int8(x), eager):.3f}, "
          f"ExecuTorch int8 {distance(method.execute([x])[0], eager):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aeq-python", help="a python with ai-edge-quantizer: adds its int8 model (LiteRT)")
    parser.add_argument("--walk", action="store_true",
                        help="also time the int8 program through the generic plan walk (Program.run)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: 1 thread everywhere, each call timed by its thread's CPU time")
    args = parser.parse_args()
    if args.clock == "cpu":
        args.threads = 1
    factories = BASE.load_models()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            measure(name, factories[name], args, tmp)


if __name__ == "__main__":
    main()
