"""The cpu backend against ExecuTorch's XNNPACK delegate, side by side in one run.

    python bench/cpu_vs_executorch.py [--models mobilenet_v2,resnet18,transformer_encoder] [--runs 200]

Needs ExecuTorch, for the benchmark only (never a dependency of edgeport), installed
next to torch 2.13 in a separate environment:

    pip install torch==2.13.0 && pip install --no-deps executorch==1.5.1 && \\
    pip install 'torchao==0.18.*' flatbuffers pandas pyyaml ruamel.yaml sympy tabulate hydra-core \\
        omegaconf expecttest hypothesis kgb parameterized py-cpuinfo requests pytorch-tokenizers && \\
    pip install -e '.[cpu]'

For each model it measures, in this order: export time end to end (from the eager
module to a saved file) for both, alternating, best of two; edgeport's time split into torch.export, core-ATen
decomposition, and lowering (partition + compile + save); latency, alternating short
blocks of edgeport and ExecuTorch calls so load changes hit both (`alternate`); and
accuracy against eager. Then edgeport's Python overhead per call on a tiny model. Both run with 2 threads.
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
from edgeport.capture import capture
from edgeport.lowering import lower_method
from edgeport.testing import compare, registry_for

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS = 2


def load_models():
    spec = importlib.util.spec_from_file_location("models", os.path.join(HERE, "..", "examples", "models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FACTORIES


def executorch_export(model, inputs, path: str) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, inputs)
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    with open(path, "wb") as f:
        f.write(program.buffer)


def executorch_method(path: str):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(path).load_method("forward")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(ours, theirs, runs: int, block: int = 5) -> tuple[list[float], list[float]]:
    """Latencies in ms of `runs` calls each, alternating blocks of `block` calls.

    Each block starts with an untimed call after a short pause: the other runtime's
    thread pool may still be spinning on the two cores, and its first call after the
    switch would otherwise pay for that. Both runtimes get the same treatment.
    """
    lat = {ours: [], theirs: []}
    for _ in range(-(-runs // block)):
        for fn in (ours, theirs):
            time.sleep(0.02)
            fn()
            lat[fn] += [timed(fn) * 1e3 for _ in range(block)]
    return lat[ours], lat[theirs]


def edgeport_phases(model, inputs, registry, tmp: str) -> dict[str, float]:
    """edgeport's export split into phases: torch.export, core-ATen decomposition (what
    capture adds to torch.export), and lowering: partition + compile + save."""
    from edgeport.api import _parse_options, _select_backends
    from edgeport.manifest import Manifest
    from edgeport.program import Program, file_info

    selected = _select_backends(registry, ["cpu"])
    options = _parse_options(selected, {"cpu": {"threads": THREADS}})
    t_export = timed(lambda: torch.export.export(model, inputs))
    start = time.perf_counter()
    program = capture(model, inputs, list(selected.values()), options)
    t_capture = time.perf_counter() - start
    start = time.perf_counter()
    lowered = lower_method("forward", program, selected, options)
    manifest = Manifest({}, {"forward": lowered.plan}, lowered.artifacts, {},
                        {p: file_info(d) for p, d in lowered.files.items()}, {"forward": lowered.report})
    Program(manifest, lowered.files).save(os.path.join(tmp, "lowered.edgeport"))
    t_lower = time.perf_counter() - start
    return {"torch.export": t_export, "decompose": max(t_capture - t_export, 0.0), "lower": t_lower}


def measure(name: str, factory, runs: int, tmp: str) -> None:
    model, inputs = factory()
    backend = CpuBackend()
    registry = registry_for(backend)
    ours_path, et_path = os.path.join(tmp, f"{name}.edgeport"), os.path.join(tmp, f"{name}.pte")
    export_ours = lambda: edgeport.export(model, inputs, ["cpu"], options={"cpu": {"threads": THREADS}},  # noqa: E731
                                          registry=registry).save(ours_path)
    export_et = lambda: executorch_export(model, inputs, et_path)  # noqa: E731
    times_ours, times_et = [], []
    for _ in range(2):  # alternate ours, ExecuTorch, ours, ExecuTorch; keep each one's best
        times_ours.append(timed(export_ours))
        times_et.append(timed(export_et))
    t_ours, t_et = min(times_ours), min(times_et)
    phases = edgeport_phases(model, inputs, registry, tmp)

    ours = edgeport.load(ours_path, registry=registry)
    et = executorch_method(et_path)
    xs = list(inputs)
    with torch.no_grad():
        expected = model(*inputs)
    err_ours, err_et = compare(ours(*inputs), expected), compare(et.execute(xs)[0], expected)
    lat_ours, lat_et = alternate(lambda: ours(*inputs), lambda: et.execute(xs), runs)
    mo, me = statistics.median(lat_ours), statistics.median(lat_et)
    print(f"| {name} | {mo:.2f} | {me:.2f} | {mo / me:.2f} | {t_ours:.2f} | {t_et:.2f} | {t_ours / t_et:.2f} | "
          f"{phases['torch.export']:.2f} / {phases['decompose']:.2f} / {phases['lower']:.3f} | "
          f"{err_ours:.1e} / {err_et:.1e} |", flush=True)


def python_overhead(runs: int = 2000) -> None:
    """prog(x) minus the delegate's own run() on a tiny model: input checks and dispatch."""
    model, x = torch.nn.Linear(8, 8).eval(), torch.randn(1, 8)
    backend = CpuBackend()
    program = edgeport.export(model, (x,), ["cpu"], registry=registry_for(backend))
    runtime = program.runtime()
    executable = runtime._methods["forward"][1][0].executable
    for _ in range(200):
        program(x), executable.run([x])
    whole = statistics.median(timed(lambda: program(x)) for _ in range(runs))
    inner = statistics.median(timed(lambda: executable.run([x])) for _ in range(runs))
    print(f"\nPython overhead per call (tiny Linear 8x8): prog(x) {whole * 1e6:.1f} µs, "
          f"delegate run() alone {inner * 1e6:.1f} µs, overhead {(whole - inner) * 1e6:.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet18,transformer_encoder")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    factories = load_models()
    with tempfile.TemporaryDirectory() as tmp:
        warm = torch.nn.Linear(2, 2), (torch.randn(1, 2),)  # first export in a process pays one-off costs
        edgeport.export(*warm, ["cpu"], registry=registry_for(CpuBackend()))
        executorch_export(*warm, os.path.join(tmp, "warm.pte"))
        print("| model | edgeport ms | ExecuTorch ms | latency ratio | edgeport export s | ExecuTorch export s "
              "| export ratio | edgeport: torch.export / decompose / lower s | rel. error edgeport / ExecuTorch |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in args.models.split(","):
            measure(name, factories[name], args.runs, tmp)
    python_overhead()


if __name__ == "__main__":
    main()
