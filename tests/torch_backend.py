"""A test-only backend: claims a configurable set of ops and runs them with torch.

It exercises partitioning, lowering, save/load and the runtime without any vendor
toolchain. Its artifact is the partition stored the way portable steps are.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any, Sequence

import torch

import edgeport
from edgeport.portable import PortableExecutable, program_from_files, program_to_files


@dataclass(frozen=True)
class TorchOpsOptions:
    scale: float = 1.0  # multiplies outputs: lets a test plant a numerically wrong kernel


class TorchOpsBackend(edgeport.Backend):
    """Claims nodes whose op name contains one of ``ops`` (e.g. "relu", "add")."""

    options = TorchOpsOptions

    def __init__(self, name: str = "torchops", ops: Sequence[str] = ("relu", "add", "mul"),
                 fail_compile: bool = False, can_run: bool = True, decline_on_compile: Sequence[str] = ()):
        self.name = name
        self.ops = tuple(ops)
        self.fail_compile = fail_compile
        self.can_run = can_run
        self.decline_on_compile = tuple(decline_on_compile)
        self.compiled: list[list[str]] = []

    def availability(self) -> edgeport.Availability:
        if self.can_run:
            return edgeport.Availability(True, True)
        return edgeport.Availability(True, False, why="the test says it cannot run here")

    def support(self, node, ctx) -> edgeport.Support:
        op = str(node.target)
        if any(f"aten.{o}." in op for o in self.ops):
            return edgeport.Support.yes()
        return edgeport.Support.no(f"{self.name} has no kernel for {op}")

    def compile(self, program, options) -> edgeport.Artifact:
        names = [n.name for n in program.graph.nodes if n.op == "call_function"]
        self.compiled.append(names)
        if self.fail_compile:
            raise RuntimeError("planted compile failure")
        refused = {n: "refused at compile time" for n in names if any(d in n for d in self.decline_on_compile)}
        if refused:
            raise edgeport.DeclineNodes(refused)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            for rel, data in program_to_files(program).items():
                z.writestr(rel, data)
        return edgeport.Artifact(buffer.getvalue(), suffix=".zip", metadata={"nodes": len(names)})

    def load(self, artifact: edgeport.Artifact) -> edgeport.Executable:
        z = zipfile.ZipFile(io.BytesIO(artifact.data))
        return _Scaled(PortableExecutable(program_from_files(z.read)), artifact.options.scale)


class _Scaled:
    def __init__(self, inner: PortableExecutable, scale: float) -> None:
        self.inner, self.scale = inner, scale

    def run(self, inputs: Sequence[torch.Tensor]) -> Sequence[Any]:
        outs = self.inner.run([torch.as_tensor(x) for x in inputs])  # numpy arrays from `edgeport run` too
        return [o * self.scale for o in outs] if self.scale != 1.0 else outs


def run_with_kernel_off(artifact: edgeport.Artifact, op: Any, factor: float) -> PortableExecutable:
    """The artifact's program run by torch with ``op``'s output ``factor`` times too
    large: a planted wrong kernel for the numerical checks to find."""
    program = program_from_files(zipfile.ZipFile(io.BytesIO(artifact.data)).read)
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.target == op:
            with graph.inserting_after(node):
                off = graph.call_function(torch.ops.aten.mul.Tensor, (node, factor))
            node.replace_all_uses_with(off, delete_user_cb=lambda user: user is not off)
    program.graph_module.recompile()
    return PortableExecutable(program)


def registry_with(*backends: edgeport.Backend) -> edgeport.Registry:
    """A fresh registry holding only ``backends`` (never the installed entry points)."""
    registry = edgeport.Registry(entry_points=False)

    class Plugin:
        @edgeport.hookimpl
        def edgeport_register_backends(self, register):
            for backend in backends:
                register(backend)

    registry.add_plugin(Plugin(), name="test-plugin")
    return registry
