"""The cost of a quantized program's finite-input check (core/finite_inputs.py), A/B in one process.

    python bench/finite_check.py --program <int8 MobileNetV2>.edgeport [--runs 2000]

Calls the program's direct call (runtime.py) with the check and without it, alternating,
on one input tensor: rewritten before each call (as an app's preprocessing leaves it:
in cache) or not (the previous call's inference has evicted it). Prints, per variant,
the median and 10th percentile of the wall time and of the calling thread's CPU time
(the check runs in that thread; LiteRT's workers do not count there).

Reads the runtime's private fields to build the variant without the check: a
measurement, not API.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import edgeport
from edgeport import runtime


def variants(program: edgeport.Program) -> dict[str, Callable]:
    rt = program.runtime()
    plan, steps, _ = rt._methods["forward"]
    with_check = rt._direct["forward"]
    if with_check is None or rt._finite["forward"] is None:
        raise SystemExit("the program's forward is not one quantized delegate step with a checked input")
    return {"check": with_check, "none": runtime._direct_call(plan, steps, rt._values, None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", required=True)
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    calls = variants(edgeport.load(args.program))
    spec = edgeport.load(args.program).manifest.methods["forward"].inputs[0]
    source, x = torch.randn(*spec.shape), torch.empty(*spec.shape)
    for fresh in (True, False):
        wall: dict[str, list[float]] = {name: [] for name in calls}
        cpu: dict[str, list[float]] = {name: [] for name in calls}
        for i in range(args.runs):
            for name in (("check", "none") if i % 2 else ("none", "check")):
                if fresh:
                    torch.mul(source, 1.0, out=x)
                w, c = time.perf_counter(), time.thread_time()
                calls[name]([x])
                cpu[name].append(time.thread_time() - c)
                wall[name].append(time.perf_counter() - w)
        print("input just written" if fresh else "input out of cache")
        for name in calls:
            print(f"  {name:5s} wall median {statistics.median(wall[name]) * 1e3:.3f} ms, "
                  f"p10 {sorted(wall[name])[len(wall[name]) // 10] * 1e3:.3f}; caller's CPU median "
                  f"{statistics.median(cpu[name]) * 1e6:.0f} µs, p10 {sorted(cpu[name])[len(cpu[name]) // 10] * 1e6:.0f}")


if __name__ == "__main__":
    main()
