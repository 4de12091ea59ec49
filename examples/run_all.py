"""The main job: export an example model for every backend available here, run it, and
compare each program with eager PyTorch.

    python examples/run_all.py [--model mobilenet_v2] [--repeat 20]

A backend that can compile here but not run (Core ML off macOS) is exported and run on
its torch reference, and labelled "reference" in the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

import edgeport
from edgeport.cli.explain import print_summary
from edgeport.cli.spec import load_factory
from edgeport.testing import compare

HERE = os.path.dirname(os.path.abspath(__file__))


def median_ms(fn, repeat: int) -> float:
    fn()  # warm up: first calls load artifacts and allocate
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=".", help="where to write the .edgeport files")
    args = parser.parse_args()
    console = Console()
    model, inputs = load_factory(f"{os.path.join(HERE, 'models.py')}:{args.model}")
    with torch.no_grad():
        expected = model(*inputs)
    eager_ms = median_ms(lambda: model(*inputs), args.repeat)

    registry = edgeport.default_registry()
    for broken in registry.broken():
        console.print(f"[yellow]skipping broken plugin {broken.plugin}[/yellow]: {broken.error}")
    candidates = ["portable"] + [n for n, e in registry.entries().items() if e.backend.availability().can_compile]
    results = Table("backend", "runs as", "export s", "latency ms (median)", "vs eager", "rel. max error")
    results.add_row("eager torch", "torch", "-", f"{eager_ms:.2f}", "1.00x", "0")
    for name in candidates:
        console.rule(f"{args.model} on {name}")
        start = time.perf_counter()
        program = edgeport.export(model, inputs, [name])
        path = os.path.join(args.out, f"{args.model}.{name}.edgeport")
        program.save(path)
        export_s = time.perf_counter() - start
        print_summary(program.report())
        loaded = edgeport.load(path, reference=True)
        labels = sorted(set(loaded.runtime().step_labels("forward")))
        error = compare(loaded(*inputs), expected)
        latency = median_ms(lambda: loaded(*inputs), args.repeat)
        results.add_row(name, ", ".join(labels), f"{export_s:.2f}", f"{latency:.2f}",
                        f"{eager_ms / latency:.2f}x", f"{error:.2e}")
    console.rule("summary")
    console.print(results)
    console.print("a label after ':' says how a step ran here when not on its target hardware "
                  "(simulator, CPU reference, torch reference): its latency says nothing about the device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
