"""Helpers shared by the qualcomm tests: export a function, compile it, compare outputs."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

# fp16 on HTP against fp32 eager: the tolerance the issue states for whole models.
MIN_COSINE = 0.999


class Fn(nn.Module):
    """A function as a module, so a test graph can be one lambda."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def partition_of(module: nn.Module, *inputs: torch.Tensor) -> torch.export.ExportedProgram:
    """What the core hands a backend: the decomposed edge program (here: all of it)."""
    return torch.export.export(module.eval(), tuple(inputs)).run_decompositions()


def node_named(program: torch.export.ExportedProgram, name: str) -> torch.fx.Node:
    return next(n for n in program.graph.nodes if n.name == name)


def cosine(a: Any, b: Any) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def max_abs(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
