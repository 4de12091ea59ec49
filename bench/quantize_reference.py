"""edgeport's int8 .tflite against Google's ai-edge-quantizer's, op by op and timed.

    python bench/quantize_reference.py [--aeq-python /path/to/venv/bin/python] [--runs 400] [--threads 2]

Issue 14 took LiteRT running an int8 model that ai-edge-quantizer 0.10 (recipe
`static_wi8_ai8`) made from our own fp32 .tflite as proof that the kernels allow
MobileNetV2 int8 at 0.94-0.95x ExecuTorch's latency. This bench asks whether our writer
emits anything slower than that model. It exports MobileNetV2 fp32 and int8 with the cpu
backend (the same seeded calibration batches for both quantizers), has ai-edge-quantizer
quantize the fp32 artifact, then prints:

- each model's operator counts and its input/output types, and every operator whose
  kind, tensor types, quantization granularity (per-tensor / per-channel) or fused
  activation differs, position by position;
- latency of each in LiteRT with the same interpreter options, alternated in short
  blocks: 1-thread CPU time of the calling thread (what the model costs, barely moved
  by other work on the machine) and N-thread wall time (median / p10 / min). Our model
  is timed twice: as edgeport runs it (float input and output) and with its boundary
  QUANTIZE and DEQUANTIZE cut off, taking and giving int8 like ai-edge-quantizer's.

ai-edge-quantizer is never a dependency of edgeport. It pins its own ai-edge-litert and
may pull in tensorflow, so install it in a separate environment
(`python -m venv aeq && aeq/bin/pip install 'ai-edge-quantizer==0.10.*'`) and pass that
environment's python with --aeq-python; without it (and without the package importable
here) the bench says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from typing import Callable

import numpy as np
import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.testing import registry_for

HERE = os.path.dirname(os.path.abspath(__file__))

# Run by the ai-edge-quantizer environment: argv = float.tflite out.tflite calibration.npz
QUANTIZE_SCRIPT = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
from ai_edge_quantizer import quantizer, recipe
src, dst, calibration = sys.argv[1:4]
signatures = Interpreter(model_path=src).get_signature_list()
key = next(iter(signatures))
name = signatures[key]["inputs"][0]
data = np.load(calibration)
q = quantizer.Quantizer(src)
q.load_quantization_recipe(recipe.static_wi8_ai8())
result = q.calibrate({key: [{name: data[k]} for k in data.files]})
q.quantize(result, enable_progress_report=False).export_model(dst, overwrite=True)
"""


def aeq_python(requested: str | None) -> str | None:
    """The python that can run ai-edge-quantizer: the one asked for, else this one when
    the package imports here; None when neither."""
    if requested:
        try:
            probe = subprocess.run([requested, "-c", "import ai_edge_quantizer"], capture_output=True)
        except OSError:  # no such python
            return None
        return requested if probe.returncode == 0 else None
    return sys.executable if importlib.util.find_spec("ai_edge_quantizer") else None


def load_model(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    spec = importlib.util.spec_from_file_location("models", os.path.join(HERE, "..", "examples", "models.py"))
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    return models.FACTORIES[name]()


def quantize_with_aeq(python: str, float_model: str, batches: list[tuple[torch.Tensor, ...]], out: str) -> None:
    """ai-edge-quantizer's `static_wi8_ai8` of ``float_model`` into ``out``, calibrated
    on ``batches`` (one input each), run by ``python`` (its own environment)."""
    calibration = out + ".calibration.npz"
    np.savez(calibration, *[b[0].numpy() for b in batches])
    subprocess.run([python, "-c", QUANTIZE_SCRIPT, float_model, out, calibration], check=True, capture_output=True)


def export_artifacts(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...],
                     batches: list[tuple[torch.Tensor, ...]], tmp: str) -> dict[str, str]:
    """fp32 and int8 .tflite of the cpu backend, taken out of their .edgeport files."""
    registry = registry_for(CpuBackend())
    paths = {}
    for kind, quantize in (("fp32", None), ("int8", "int8")):
        program = edgeport.export(model, inputs, ["cpu"], quantize=quantize,
                                  calibration=batches if quantize else None, registry=registry)
        program.save(os.path.join(tmp, f"{kind}.edgeport"))
        with zipfile.ZipFile(os.path.join(tmp, f"{kind}.edgeport")) as archive:
            (artifact,) = [n for n in archive.namelist() if n.endswith(".tflite")]
            paths[kind] = os.path.join(tmp, f"{kind}.tflite")
            with open(paths[kind], "wb") as f:
                f.write(archive.read(artifact))
    return paths


def without_boundary_quantization(path: str, out: str) -> str:
    """The model with its leading QUANTIZE and trailing DEQUANTIZE cut off, so that it
    takes and gives int8 as ai-edge-quantizer's model does (one input, one output)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    graph = model.subgraphs[0]
    first, last = graph.operators[0], graph.operators[-1]
    kinds = [_op_name(model, op) for op in (first, last)]
    if kinds != ["QUANTIZE", "DEQUANTIZE"]:
        raise SystemExit(f"expected the int8 model to start with QUANTIZE and end with DEQUANTIZE, got {kinds}")
    graph.inputs, graph.outputs = [first.outputs[0]], [last.inputs[0]]
    graph.operators = graph.operators[1:-1]
    for signature in model.signatureDefs or []:
        signature.inputs[0].tensorIndex, signature.outputs[0].tensorIndex = graph.inputs[0], graph.outputs[0]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(out, "wb") as f:
        f.write(builder.Output())
    return out


def _op_name(model, op) -> str:  # noqa: ANN001 - schema object-API types
    from ai_edge_litert import schema_py_generated as schema

    code = model.operatorCodes[op.opcodeIndex]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return names[max(code.builtinCode, code.deprecatedBuiltinCode)]


def describe(path: str) -> list[tuple[str, ...]]:
    """Per operator: kind, then each tensor as dtype + granularity, then the fused activation."""
    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    graph = model.subgraphs[0]
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def tensor(index: int) -> str:
        t = graph.tensors[index]
        q = t.quantization
        scales = 0 if q is None or q.scale is None else len(q.scale)
        return types[t.type] + ("" if scales == 0 else "/tensor" if scales == 1 else f"/channel{q.quantizedDimension}")

    rows = []
    for op in graph.operators:
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        tensors = [tensor(i) for i in list(op.inputs) + list(op.outputs) if i >= 0]
        rows.append((_op_name(model, op), *tensors, f"act{activation}"))
    return rows


def print_structure(ours: str, theirs: str) -> None:
    a, b = describe(ours), describe(theirs)
    for label, rows in (("edgeport", a), ("ai-edge-quantizer", b)):
        counts = Counter(r[0] for r in rows)
        print(f"  {label:18s} {len(rows)} ops: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    core = lambda rows: [r for r in rows if r[0] not in ("QUANTIZE", "DEQUANTIZE")]  # noqa: E731
    diffs = [(i, x, y) for i, (x, y) in enumerate(zip(core(a), core(b))) if x != y]
    print(f"  operators that differ (boundary QUANTIZE/DEQUANTIZE aside): {len(diffs)}"
          + ("" if len(core(a)) == len(core(b)) else f"; op counts differ ({len(core(a))} vs {len(core(b))})"))
    for i, x, y in diffs[:10]:
        print(f"    #{i}: {x} vs {y}")


def runner(path: str, threads: int) -> Callable[[], object]:
    """One call as edgeport's runner makes it: set the input, invoke, read the output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = np.random.default_rng(0).standard_normal(inp["shape"]).astype(np.float32)
    if inp["dtype"] == np.int8:
        scale, zero_point = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)

    def call() -> object:
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return call


def alternate(calls: dict[str, Callable[[], object]], runs: int, clock: Callable[[], float],
              block: int = 5) -> dict[str, list[float]]:
    """ms per call of each, alternating blocks, each block after a pause and a warm call."""
    lat: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(-(-runs // block)):
        for name, fn in calls.items():
            time.sleep(0.01)
            fn()
            for _ in range(block):
                start = clock()
                fn()
                lat[name].append((clock() - start) * 1e3)
    return lat


def print_latency(title: str, lat: dict[str, list[float]]) -> None:
    print(f"  {title}")
    reference = lat["ai-edge-quantizer (int8 in/out)"]
    for name, values in lat.items():
        stats = (statistics.median(values), statistics.quantiles(values, n=10)[0], min(values))
        ratio = "  ".join(f"{s / r:.3f}" for s, r in zip(stats, (statistics.median(reference),
                                                                   statistics.quantiles(reference, n=10)[0],
                                                                   min(reference))))
        print(f"    {name:34s} median {stats[0]:6.3f} ms  p10 {stats[1]:6.3f}  min {stats[2]:6.3f}"
              f"   / ai-edge-quantizer: {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--aeq-python", help="a python whose environment has ai-edge-quantizer")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    python = aeq_python(args.aeq_python)
    if python is None:
        where = f"under {args.aeq_python}" if args.aeq_python else "here (and no --aeq-python was given)"
        print(f"skipped: ai-edge-quantizer does not import {where}; "
              "install it in its own environment: pip install 'ai-edge-quantizer==0.10.*'")
        return
    model, inputs = load_model(args.model)
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(torch.randn(x.shape, generator=generator) for x in inputs) for _ in range(args.batches)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_artifacts(model, inputs, batches, tmp)
        paths["aeq"] = os.path.join(tmp, "aeq.tflite")
        quantize_with_aeq(python, paths["fp32"], batches, paths["aeq"])
        print(f"\n{args.model}: {args.batches} random calibration batches (speed only), "
              "the same for both quantizers")
        print_structure(paths["int8"], paths["aeq"])
        paths["int8_io"] = without_boundary_quantization(paths["int8"], os.path.join(tmp, "int8_io.tflite"))
        names = {"edgeport (float in/out)": "int8", "edgeport, boundary Q/DQ cut": "int8_io",
                 "ai-edge-quantizer (int8 in/out)": "aeq"}
        for threads, clock, title in ((1, time.thread_time, "1 thread, CPU time of the calling thread"),
                                      (args.threads, time.perf_counter, f"{args.threads} threads, wall time")):
            calls = {name: runner(paths[key], threads) for name, key in names.items()}
            print_latency(title, alternate(calls, args.runs, clock))


if __name__ == "__main__":
    main()
