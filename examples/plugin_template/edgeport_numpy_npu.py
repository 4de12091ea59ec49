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

    @property
    def version(self) -> str:
        return np.__version__

    def support(self, node, ctx) -> edgeport.Support:
        import torch  # the compile side: only export asks

        if str(node.target) not in KERNELS:
            return edgeport.Support.no(f"no kernel for {node.target}")
        val = node.meta.get("val")
        if getattr(val, "dtype", None) != torch.float32:
            return edgeport.Support.no(f"computes only float32, this node is {getattr(val, 'dtype', None)}")
        if any(not isinstance(a, torch.fx.Node) for a in node.args):
            return edgeport.Support.no("takes tensors only, not scalars")
        return edgeport.Support.yes()

    def compile(self, program, options) -> edgeport.Artifact:
        slots = {spec.arg.name: i for i, spec in enumerate(program.graph_signature.input_specs)}
        if len(slots) != len(program.graph_signature.user_inputs):
            raise edgeport.BackendError("numpy_npu holds no weights; partitions must not have constants")
        ops = []
        for node in program.graph.nodes:
            if node.op == "call_function":
                slots[node.name] = len(slots)
                ops.append([KERNELS[str(node.target)][0], [slots[a.name] for a in node.args]])
        outputs = [slots[n.name] for n in program.graph.output_node().args[0]]
        data = json.dumps({"inputs": len(program.graph_signature.user_inputs), "ops": ops, "outputs": outputs})
        return edgeport.Artifact(data.encode(), suffix=".json", metadata={"ops": len(ops)})

    def load(self, artifact: edgeport.Artifact) -> edgeport.Executable:
        return OpListExecutable(json.loads(artifact.data))


class OpListExecutable:
    def __init__(self, plan: dict) -> None:
        self.ops = [(BY_NAME[name], args) for name, args in plan["ops"]]
        self.outputs = plan["outputs"]

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        slots = [edgeport.as_numpy(t) for t in inputs]  # torch tensors, or numpy arrays on a device
        for kernel, args in self.ops:
            slots.append(kernel(*(slots[i] for i in args)))
        return [np.ascontiguousarray(slots[i]) for i in self.outputs]


@edgeport.hookimpl
def edgeport_register_backends(register):
    register(NumpyNpuBackend())
