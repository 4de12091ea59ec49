"""Helpers shared by the Core ML backend tests (fixtures live in conftest.py).

`export` captures a module the way edgeport's capture does for this backend: core
ATen decompositions, minus the ops the backend asks to keep. `Converted` compiles a
program and reads the artifact back the way a Linux machine can: unzipped, its spec
described and its MIL program validated by coremltools.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable

import pytest
import torch

from edgeport.backends.coreml import CoreMLBackend, CoreMLOptions, package
from edgeport.backends.coreml.support import KEEP_OPS
from example_models import load_example  # noqa: F401  (re-exported for the coreml tests)

ON_MACOS = sys.platform == "darwin"
EXAMPLES = ("mobilenet_v2", "resnet18", "transformer_encoder", "tiny_llama")
macos_only = [
    pytest.mark.macos,
    pytest.mark.skipif(not ON_MACOS, reason="Core ML runs only on macOS"),
]


class Lambda(torch.nn.Module):
    """Wraps a function as a module, so a one-op case reads as one line."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def export(module: torch.nn.Module, inputs: tuple, keep: Iterable[Any] = KEEP_OPS) -> torch.export.ExportedProgram:
    table = torch.export.default_decompositions()
    for op in keep:
        table.pop(op, None)
    return torch.export.export(module.eval(), inputs).run_decompositions(table)


@dataclass
class Converted:
    """A compiled program and what Linux can read back from its artifact."""

    program: torch.export.ExportedProgram
    artifact: Any
    description: package.Description
    mil: Any  # the MIL program re-loaded from the package and validated by coremltools

    @classmethod
    def of(cls, backend: CoreMLBackend, program, options: CoreMLOptions | None = None) -> Converted:
        artifact = backend.compile(program, options or CoreMLOptions())
        with package.opened(artifact.data) as path:
            description = package.describe(package.load_spec(path))
            mil = package.validate(path)
        return cls(program, artifact, description, mil)


def user_io(program) -> tuple[list, list]:
    """(name, shape, dtype) of each user input and output of a program, in order."""
    nodes = {n.name: n for n in program.graph.nodes}
    sig = program.graph_signature

    def describe(name):
        val = nodes[name].meta["val"]
        return name, tuple(val.shape), val.dtype

    return [describe(n) for n in sig.user_inputs], [describe(n) for n in sig.user_outputs]
