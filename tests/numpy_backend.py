"""A test-only backend whose run side needs no torch: elementwise float32 ops, compiled to
a JSON op list and run with numpy.

The conformance kit also runs each program of a backend's steps only in a process
without torch, where `TorchOpsBackend` (torch_backend.py, whose runtime is torch) fails
by design; tests that need a plugin passing the kit use this one. The module imports no
torch: that process imports it to find the backend.
"""

from __future__ import annotations

import json
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import edgeport

KERNELS = {"aten.add.Tensor": np.add, "aten.mul.Tensor": np.multiply, "aten.relu.default": lambda x: np.maximum(x, 0)}


@dataclass(frozen=True)
class NumpyOpsOptions:
    scale: float = 1.0  # multiplies outputs: lets a test plant a numerically wrong kernel


class NumpyOpsBackend(edgeport.Backend):
    options = NumpyOpsOptions

    def __init__(self, name: str = "numpyops", fail_compile: bool = False) -> None:
        self.name, self.fail_compile = name, fail_compile

    def support(self, node, ctx) -> edgeport.Support:
        if str(node.target) not in KERNELS:
            return edgeport.Support.no(f"{self.name} has no kernel for {node.target}")
        if str(getattr(node.meta.get("val"), "dtype", "")) != "torch.float32":
            return edgeport.Support.no("computes float32 only")
        if any(not hasattr(a, "name") or ctx.constant(a) is not None for a in node.args):
            return edgeport.Support.no("takes tensors computed at run time only")
        return edgeport.Support.yes()

    def compile(self, program, options) -> edgeport.Artifact:
        if self.fail_compile:
            raise RuntimeError("planted compile failure")
        ops = [[n.name, str(n.target), [a.name for a in n.args]] for n in program.graph.nodes
               if n.op == "call_function"]
        plan = {"inputs": list(program.graph_signature.user_inputs), "ops": ops,
                "outputs": list(program.graph_signature.user_outputs)}
        return edgeport.Artifact(json.dumps(plan).encode(), suffix=".json")

    def load(self, artifact: edgeport.Artifact) -> Any:
        return OpList(json.loads(edgeport.as_bytes(artifact.data)), artifact.options.scale)


class OpList:
    def __init__(self, plan: dict, scale: float) -> None:
        self.plan, self.scale = plan, scale

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        values = dict(zip(self.plan["inputs"], map(edgeport.as_numpy, inputs)))
        for name, op, args in self.plan["ops"]:
            values[name] = KERNELS[op](*(values[a] for a in args))
        return [(values[name] * np.float32(self.scale)).astype(np.float32) for name in self.plan["outputs"]]


class OffWithoutTorch(NumpyOpsBackend):
    """Right where torch is installed; without it, its answers are twice too large."""

    def load(self, artifact: edgeport.Artifact) -> Any:
        return OpList(json.loads(edgeport.as_bytes(artifact.data)), 1.0 if sys.modules.get("torch") else 2.0)


class TorchToLoad(NumpyOpsBackend):
    """Right on every case the kit runs with torch; its load imports torch (a stand-in
    runtime, as docs/writing-a-backend.md's example once had), so it fails on a device."""

    def load(self, artifact: edgeport.Artifact) -> Any:
        import torch  # noqa: F401 - the planted run-side import

        return super().load(artifact)


class TorchToRun(NumpyOpsBackend):
    """Its executable's run imports torch."""

    def load(self, artifact: edgeport.Artifact) -> Any:
        return _TorchToRun(super().load(artifact))


class _TorchToRun:
    def __init__(self, inner: OpList) -> None:
        self.inner = inner

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        import torch

        return [torch.as_tensor(o).numpy() for o in self.inner.run(inputs)]


# -- backends that hang on a case with an add (the kit's time limit: core/testing/time_limit.py) --

RELEASE = threading.Event()  # set by a test when done: a compile blocked on it ends (raising)


def _adds(plan: dict) -> bool:
    return any(op == "aten.add.Tensor" for _, op, _ in plan["ops"])


class LoopsInRun(NumpyOpsBackend):
    """Its run of a program with an add spins in a Python loop forever: a thread can be
    stopped there (at its next Python instruction), so the backend goes on."""

    def load(self, artifact: edgeport.Artifact) -> Any:
        return _Loops(super().load(artifact))


class _Loops:
    def __init__(self, inner: OpList) -> None:
        self.inner = inner

    def run(self, inputs: Sequence[Any]) -> list[np.ndarray]:
        forever = _adds(self.inner.plan)
        while forever:
            pass
        return self.inner.run(inputs)


class BlocksInCompile(NumpyOpsBackend):
    """Its compile of a partition with an add waits on a lock no one releases (a
    deadlock, as in a vendor library: the thread sees no exception while it waits)."""

    def compile(self, program, options) -> edgeport.Artifact:
        if any(str(n.target) == "aten.add.Tensor" for n in program.graph.nodes):
            RELEASE.wait()
            raise RuntimeError("released by the test")
        return super().compile(program, options)


class BlocksWithoutTorch(NumpyOpsBackend):
    """Right where torch is; without it, its run of a program with an add never returns."""

    def load(self, artifact: edgeport.Artifact) -> Any:
        inner = super().load(artifact)
        if sys.modules.get("torch") is None and _adds(inner.plan):
            return types.SimpleNamespace(run=lambda inputs: threading.Event().wait())
        return inner


class LoopsInVersion(NumpyOpsBackend):
    """Its version, a property (it may ask a toolchain), never returns: the kit reads it
    before any case, within a case's time limit too."""

    @property
    def version(self) -> str:
        while True:
            pass


def _devices_forever() -> list[str]:
    while True:
        pass


@dataclass(frozen=True)
class DeviceOptions:
    device: str = edgeport.option("npu0", choices=_devices_forever)  # as a toolchain asked for its devices


class LoopsListingChoices(NumpyOpsBackend):
    """Its option's valid values come from a toolchain call that never returns: the kit
    checks options before any case, within a case's time limit too."""

    options = DeviceOptions
