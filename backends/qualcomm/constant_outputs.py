"""A partition with nothing to compute for QNN: declined back before the compile.

When every output of a partition depends on no partition input's values (``torch.full((3,),
2.0)`` returned as it is, the empty ``full`` of ``linspace(start, end, steps=0)``, or the
``full_like`` of ``x.zero_()``, which reads only its input's shape), the
ONNX graph only returns constants, and QNN compiles it to no EPContext model at all: the
partition fell back whole (the OpInfo sweep's linspace.tensor_overload). A partition
that also computes something compiles fine with a constant output beside it. Export
folds constants that feed computed values; what is left is a constant the method
returns, which portable torch hands back for free.
"""

from __future__ import annotations

from torch.export import ExportedProgram

import edgeport
from edgeport.fold import SHAPE_ONLY

REASON = ("its value depends on no input, like every output of its partition: QNN compiles a graph that only "
          "returns constants to no EPContext model")


def constant_outputs(program: ExportedProgram) -> dict[str, str]:
    """Every output of the partition, each with the reason, when none depends on a
    run-time input's values; else none."""
    constant = edgeport.SupportContext(program, None).constant
    fixed: set[str] = set()
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if constant(node) is not None:
                fixed.add(node.name)
        elif node.op == "call_function" and (node.target in SHAPE_ONLY
                                             or all(arg.name in fixed for arg in node.all_input_nodes)):
            fixed.add(node.name)
    outputs = program.graph.output_node().all_input_nodes
    if not all(node.name in fixed for node in outputs):
        return {}
    return {node.name: REASON for node in outputs if node.op == "call_function"}
