"""The lowering step alone (``lower_method``: support, partitioning, the TFLite write,
assembly) of example models, two edgeport trees alternating, timed by CPU time.

    git archive c244677 | tar -x -C /tmp/before      # any edgeport tree
    python bench/lowering_time.py --before /tmp/before [--after .] [--blocks 4] [--reps 5]
                                  [--models resnet18] [--threads 1]

`export_time.py` times whole exports, one per block: a lowering of ~0.3 s then shows
differences of a few percent that the machine's load swamps. Here each block is a child
process that imports edgeport from one tree (`export_time._use_tree`), exports each
model once to capture the arguments of ``lower_method``, then calls ``lower_method``
on them ``--reps`` times. Per call: the calling thread's CPU time (what the lowering
itself costs, least disturbed by other processes), the process's CPU time (adds BLAS
and torch worker threads), wall time, and minor page faults (fresh memory touched:
deterministic, and on this machine ~2 ms per MB). ``--threads 1`` runs BLAS and torch
on the calling thread only, so its CPU time is all of the work. Reported: min / p10 /
median over all calls of a tree, and after / before of the minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MEASURES = ("thread", "process", "wall", "faults")


def _child(root: str, models_: list[str], reps: int) -> None:
    from export_time import _use_tree

    _use_tree(root)
    import torch

    import edgeport.api

    if os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(HERE, "..", "examples"))
    import models

    lower_method, calls = edgeport.api.lower_method, []

    def capturing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - either tree's signature
        calls.append((args, kwargs))
        return lower_method(*args, **kwargs)

    edgeport.api.lower_method = capturing
    results = {}
    for name in models_:
        torch.manual_seed(0)
        model, inputs = models.FACTORIES[name]()
        calls.clear()
        edgeport.export(model, inputs, ["cpu"])
        runs = []
        for _ in range(reps):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
            for args, kwargs in calls:
                lower_method(*args, **kwargs)
            runs.append({"thread": time.thread_time() - thread, "process": time.process_time() - process,
                         "wall": time.perf_counter() - wall,
                         "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})
        results[name] = runs
    print(json.dumps(results))


def _block(root: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads))
    command = [sys.executable, __file__, "--child", root, "--models", args.models, "--reps", str(args.reps)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return ordered[0], ordered[int(0.1 * (len(ordered) - 1))], statistics.median(ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="the edgeport tree to compare against")
    parser.add_argument("--after", default=os.path.join(HERE, ".."), help="the tree measured (default: this one)")
    parser.add_argument("--blocks", type=int, default=4, help="child processes per tree, alternating")
    parser.add_argument("--reps", type=int, default=5, help="lowerings per model in each child")
    parser.add_argument("--models", default="resnet18")
    parser.add_argument("--threads", type=int, default=0, help="BLAS/torch threads (default: theirs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.models.split(","), args.reps)
    if not args.before:
        parser.error("--before TREE is required")
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {t: {} for t in trees}
    load = [os.getloadavg()[0]]
    for i in range(args.blocks):
        for tree, root in (trees.items() if i % 2 == 0 else reversed(trees.items())):
            for model, calls in _block(root, args).items():
                runs[tree].setdefault(model, []).extend(calls)
            print(f"block {i + 1} {tree} done", file=sys.stderr)
        load.append(os.getloadavg()[0])
    print(f"lower_method, backends=cpu, {args.blocks} blocks x {args.reps} reps per tree, threads="
          f"{args.threads or 'default'}, load average {min(load):.1f}-{max(load):.1f}")
    print("(seconds, faults: min / p10 / median)")
    print(f"{'model':24} {'measure':8} {'before':>26} {'after':>26} {'after/before (min)':>19}")
    for model in args.models.split(","):
        for measure in MEASURES:
            cells = {t: _summary([r[measure] for r in runs[t][model]]) for t in trees}
            form = "%.0f / %.0f / %.0f" if measure == "faults" else "%.3f / %.3f / %.3f"
            ratio = f"{cells['after'][0] / cells['before'][0]:.3f}" if cells["before"][0] else "-"
            print(f"{model:24} {measure:8} " + " ".join(f"{form % cells[t]:>26}" for t in trees) + f" {ratio:>19}")


if __name__ == "__main__":
    main()
