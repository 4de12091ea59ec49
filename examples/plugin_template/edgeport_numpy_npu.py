"""A complete edgeport backend in one module: copy it to start your own.

It "compiles" a partition of elementwise ops into a JSON op list (standing in for a
vendor's binary) and "runs" it with numpy (standing in for the NPU driver). Swap those
two for your toolchain's compiler and runtime; the rest is the whole contract.

The module imports no torch at the top: a device without torch registers the backend
and runs `load` (the run side); `support` and `compile` (the compile side) import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import edgeport

# aten op, by name -> (name in our op list, numpy kernel). support() and compile() both
# read this one table, so the backend never accepts a node it cannot compile.
KERNELS = {
    "aten.relu.default": ("relu", lambda a: np.maximum(a, 0)),
    "aten.add.Tensor": ("add", np.add),
    "aten.mul.Tensor": ("mul", np.multiply),
    "aten.sub.Tensor": ("sub", np.subtract),
    "aten.neg.default": ("neg", np.negative),
}
BY_NAME = {name: kernel for name, kernel in KERNELS.values()}


@dataclass(frozen=True)
class NumpyNpuOptions:
    dtype: str = edgeport.option("float32", choices=("float32",))  # the only one our "NPU" computes in


class NumpyNpuBackend(edgeport.Backend):
    name = "numpy_npu"
    options = NumpyNpuOptions
    version = np.__version__  # recorded with every artifact: give your toolchain's version

    def support(self, node, ctx) -> edgeport.Support:
        import torch  # the compile side: only export asks

        if str(node.target) not in KERNELS:
            return edgeport.Support.no(f"no kernel for {node.target}")
        if (dtype := getattr(node.meta.get("val"), "dtype", None)) != torch.float32:
            return edgeport.Support.no(f"computes only float32, this node is {dtype}")
        if any(not isinstance(a, torch.fx.Node) or ctx.constant(a) is not None for a in node.args):
            return edgeport.Support.no("takes input tensors only, not scalars or weights")
        return edgeport.Support.yes()

    def compile(self, program, options) -> edgeport.Artifact:
        slots = {name: i for i, name in enumerate(program.graph_signature.user_inputs)}  # support() took no weights
        ops = []
        for node in program.graph.nodes:
            if node.op == "call_function":
                slots[node.name] = len(slots)
                ops.append([KERNELS[str(node.target)][0], [slots[a.name] for a in node.args]])
        outputs = [slots[n.name] for n in program.graph.output_node().args[0]]
        data = json.dumps({"ops": ops, "outputs": outputs}).encode()
        return edgeport.Artifact(data, suffix=".json", metadata={"ops": len(ops)})

    def load(self, artifact: edgeport.Artifact) -> edgeport.Executable:
        return OpListExecutable(json.loads(edgeport.as_bytes(artifact.data)))  # data: a view of the mapped file


class OpListExecutable:
    def __init__(self, plan: dict) -> None:
        self.plan = plan

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        slots = [edgeport.as_numpy(t) for t in inputs]  # torch tensors, or numpy arrays on a device
        for name, args in self.plan["ops"]:
            slots.append(BY_NAME[name](*(slots[i] for i in args)))
        return [np.ascontiguousarray(slots[i]) for i in self.plan["outputs"]]


@edgeport.hookimpl
def edgeport_register_backends(register):
    register(NumpyNpuBackend())
