"""Export time of the four example models (examples/models.py): two edgeport source
trees timed in the same run, e.g. main's code (before) and a branch's (after).

    git archive main | tar -x -C /tmp/before      # any edgeport tree
    python bench/export_time.py --before /tmp/before [--after .] [--rounds 4] [--backends cpu]

Two versions of edgeport cannot live in one process, so each block is a child process
that imports edgeport from one tree (a meta-path finder maps ``edgeport``,
``edgeport.backends`` and ``edgeport.partitioners`` to its folders, as the editable
install does), builds the four models, exports each once untimed (warm-up: first-call
imports, torch's caches), then times ``edgeport.export`` of each. Blocks alternate
before, after, before, after..., so a change in the machine's load hits both trees.
Reported per model and tree: min, p10 and median over the rounds, in seconds, of the
whole export and of its lowering (``lower_method``: support questions, partitioning,
compiles, assembly; the rest is torch.export's capture, the same code in both trees).
The minimum is the figure least disturbed by other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ("mobilenet_v2", "resnet18", "transformer_encoder", "tiny_llama")


def _use_tree(root: str) -> None:
    """Import edgeport from ``root`` (a checkout: core/, backends/, partitioners/), ahead
    of the editable install's finder."""
    import importlib.abc
    import importlib.machinery
    import importlib.util

    folders = {name: os.path.join(root, folder) for name, folder in
               (("edgeport", "core"), ("edgeport.backends", "backends"), ("edgeport.partitioners", "partitioners"))}

    class TreeFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201 - the finder protocol
            if fullname in folders:
                return importlib.util.spec_from_file_location(
                    fullname, os.path.join(folders[fullname], "__init__.py"),
                    submodule_search_locations=[folders[fullname]])
            if fullname.startswith("edgeport."):  # below a package above: in its folder
                return importlib.machinery.PathFinder.find_spec(fullname, path)
            return None

    sys.meta_path.insert(0, TreeFinder())


def _child(root: str, backends: list[str]) -> None:
    _use_tree(root)
    import torch

    import edgeport

    sys.path.insert(0, os.path.join(HERE, "..", "examples"))
    import models

    torch.manual_seed(0)
    built = {name: models.FACTORIES[name]() for name in MODELS}
    assert os.path.realpath(edgeport.__file__).startswith(os.path.realpath(root)), edgeport.__file__
    import edgeport.api

    lowering = []  # seconds in lower_method (support, partitioning, compiles, assembly)
    lower_method = edgeport.api.lower_method

    def timed_lowering(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - either tree's signature
        start = time.perf_counter()
        try:
            return lower_method(*args, **kwargs)
        finally:
            lowering.append(time.perf_counter() - start)

    edgeport.api.lower_method = timed_lowering
    times = {}
    for name, (model, inputs) in built.items():
        edgeport.export(model, inputs, backends)  # warm-up
        lowering.clear()
        start = time.perf_counter()
        edgeport.export(model, inputs, backends)
        times[name] = time.perf_counter() - start
        times[f"{name} lowering"] = sum(lowering)
    print(json.dumps(times))


def _block(root: str, backends: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", root, "--backends", ",".join(backends)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _p10(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.1 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="the edgeport tree to compare against")
    parser.add_argument("--after", default=os.path.join(HERE, ".."), help="the tree measured (default: this one)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--backends", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    backends = args.backends.split(",")
    if args.child:
        return _child(args.child, backends)
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for i in range(args.rounds):
        for tree, root in (trees.items() if i % 2 == 0 else reversed(trees.items())):
            runs[tree].append(_block(root, backends))
            print(f"round {i + 1} {tree}: " + ", ".join(f"{m} {s:.2f}s" for m, s in runs[tree][-1].items()),
                  file=sys.stderr)
    print(f"export time, backends={args.backends}, {args.rounds} rounds (seconds: min / p10 / median)")
    print(f"{'model':30} {'before':>22} {'after':>22} {'after/before (min)':>20}")
    for model in (m + part for m in MODELS for part in ("", " lowering")):
        cells = {}
        for tree in trees:
            values = [r[model] for r in runs[tree]]
            cells[tree] = (min(values), _p10(values), statistics.median(values))
        ratio = cells["after"][0] / cells["before"][0]
        print(f"{model:30} " + " ".join(f"{'%.2f / %.2f / %.2f' % cells[t]:>22}" for t in trees) + f" {ratio:>20.3f}")


if __name__ == "__main__":
    main()
