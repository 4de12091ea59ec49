"""Partitioner scale: a synthetic 50,000-node graph, edgeport vs torch.fx's
CapabilityBasedPartitioner, same graph and same support function, in one run.

    python bench/partition_scale.py [--nodes 50000] [--fx-budget 600] [--sizes 500,1000,2000]

CapabilityBasedPartitioner grows much faster than linearly, so it runs in a child
process with a time budget at the full size, and is compared exactly on smaller sizes.

The graph is a long chain of islands: runs of supported ops (relu, add) alternating with
unsupported ones (neg), plus skip connections reaching back over several islands.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch.fx import Graph, GraphModule
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from edgeport.backend import Support
from edgeport.partitioners.partition import partition_graph
from edgeport.partitioners.support import ask_support

aten = torch.ops.aten
SUPPORTED = {aten.relu.default, aten.add.Tensor}


def synthetic_graph(n: int, seed: int = 0) -> GraphModule:
    rng = random.Random(seed)
    graph = Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.empty(4)
    recent = [x]
    value = x
    while len(graph.nodes) < n:
        island = rng.randint(3, 12)  # supported run
        for _ in range(island):
            if rng.random() < 0.3 and len(recent) > 20:
                value = graph.call_function(aten.add.Tensor, (value, rng.choice(recent[-200:-10])))  # skip connection
            else:
                value = graph.call_function(aten.relu.default, (value,))
            value.meta["val"] = torch.empty(4)
            recent.append(value)
        value = graph.call_function(aten.neg.default, (value,))  # unsupported island of one
        value.meta["val"] = torch.empty(4)
        recent.append(value)
    graph.output(value)
    return GraphModule(torch.nn.Module(), graph)


class _FxSupport(OperatorSupportBase):
    def is_node_supported(self, submodules, node) -> bool:
        return node.op == "call_function" and node.target in SUPPORTED


def run_edgeport(gm: GraphModule) -> tuple[float, int]:
    start = time.perf_counter()
    nodes = list(gm.graph.nodes)
    matrix = ask_support(nodes, {"be": lambda n: Support.yes() if n.target in SUPPORTED else Support.no("unsupported")})
    plan = partition_graph(nodes, matrix, ["be"])
    elapsed = time.perf_counter() - start
    return elapsed, sum(1 for p in plan.partitions if p.backend == "be")


def run_fx(gm: GraphModule) -> tuple[float, int]:
    start = time.perf_counter()
    partitions = CapabilityBasedPartitioner(gm, _FxSupport(), allows_single_node_partition=True).propose_partitions()
    return time.perf_counter() - start, len(partitions)


FX_MEMORY_LIMIT = 8 << 30  # at 50k nodes fx grew past 23 GB and was OOM-killed: cap it


def _fx_child(n: int, queue) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (FX_MEMORY_LIMIT, FX_MEMORY_LIMIT))
    try:
        queue.put(run_fx(synthetic_graph(n)))
    except MemoryError:
        queue.put(f"ran out of memory (over {FX_MEMORY_LIMIT >> 30} GB)")


def fx_within_budget(n: int, budget: float) -> tuple[float, int] | str:
    """Run the fx partitioner on the n-node graph in a child; a string says why not."""
    import multiprocessing as mp
    import queue as queues

    ctx = mp.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_fx_child, args=(n, results))
    child.start()
    try:
        return results.get(timeout=budget)
    except queues.Empty:
        if child.is_alive():
            child.kill()
            return f"did not finish in {budget:.0f} s"
        return f"crashed (exit code {child.exitcode})"
    finally:
        child.join()


def compare(n: int, budget: float) -> None:
    gm = synthetic_graph(n)
    ours = min(run_edgeport(gm) for _ in range(3))
    theirs = fx_within_budget(n, budget)
    if isinstance(theirs, str):
        fx, ratio = theirs, f"> {budget / ours[0]:.0f}x" if theirs.startswith("did not") else "-"
    else:
        fx, ratio = f"{theirs[0]:.3f} s ({theirs[1]} partitions)", f"{theirs[0] / ours[0]:.0f}x"
    print(f"| {len(gm.graph.nodes):>6} | {ours[0]:.3f} s ({ours[1]} partitions) | {fx} | {ratio} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--sizes", default="500,1000,2000", help="smaller sizes compared exactly")
    parser.add_argument("--fx-budget", type=float, default=600.0, help="seconds fx may take per size")
    args = parser.parse_args()
    print("| nodes | edgeport | torch.fx CapabilityBasedPartitioner | fx / edgeport |")
    print("|---|---|---|---|")
    for n in [int(s) for s in args.sizes.split(",") if s] + [args.nodes]:
        compare(n, args.fx_budget)


if __name__ == "__main__":
    main()
