"""CPU cost of the TFLite writer's support check (`check_node`, what cpu and mediatek ask
of every node) over every node of a captured example model, in one edgeport tree.

    python bench/support_cost.py TREE MODEL     # e.g. /tmp/kit2/base mobilenet_v2

Thread CPU time (not wall time: the machine is shared) of 30 passes over the nodes;
prints min / p10 / median in milliseconds. Run it for each tree, alternating, to compare
(bench/README.md, "The support checks composed once"). The tree is imported as
export_time.py imports it.
"""

from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PASSES = 30


def main(root: str, name: str) -> None:
    sys.path.insert(0, HERE)
    import export_time

    export_time._use_tree(root)
    import torch

    from edgeport.backends.tflite import lowering, writer
    from edgeport.capture import capture

    sys.path.insert(0, os.path.join(HERE, "..", "examples"))
    import models

    torch.manual_seed(0)
    model, inputs = models.FACTORIES[name]()
    program = capture(model, inputs, [], {})
    consts = writer.constants(program)
    nodes = list(program.graph.nodes)
    passes = []
    for _ in range(PASSES):
        start = time.thread_time()
        for node in nodes:
            lowering.check_node(node, consts)
        passes.append(time.thread_time() - start)
    passes.sort()
    ms = [1e3 * passes[i] for i in (0, PASSES // 10, PASSES // 2)]
    print(f"{root} {name}: {len(nodes)} nodes, check_node over all, thread CPU ms "
          f"min {ms[0]:.2f} p10 {ms[1]:.2f} median {ms[2]:.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
