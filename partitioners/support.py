"""The support matrix: every backend's answer for every node, asked once.

Each "no" keeps its reason, because "why did this op fall back?" is the first question
users ask. Lowering adds to the matrix when a toolchain refuses a node it was promised.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch.fx import Node

from edgeport.backend import PrepareFailed, Support

SupportFn = Callable[[Node], Support]


def is_compute(node: Node) -> bool:
    """A node that some backend (or portable torch) has to execute."""
    return node.op == "call_function" and node.target is not operator.getitem


def _produces_tensors(node: Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return all(isinstance(v, torch.Tensor) or v is None for v in val)
    return isinstance(val, torch.Tensor)


@dataclass
class SupportMatrix:
    """node name -> backend name -> Support, for compute nodes only."""

    backends: tuple[str, ...]
    answers: dict[str, dict[str, Support]] = field(default_factory=dict)
    # backend -> the first error its support check raised (or the non-Support it
    # returned): a bug in the plugin, not a decline, though its nodes go elsewhere too
    faults: dict[str, str] = field(default_factory=dict)

    def supports(self, node: str, backend: str) -> bool:
        return bool(self.answers.get(node, {}).get(backend))

    def reasons(self, node: str) -> dict[str, str]:
        """Every backend's reason for declining ``node`` (empty if all accepted)."""
        return {b: s.reason for b, s in self.answers.get(node, {}).items() if not s.ok}

    def decline(self, node: str, backend: str, reason: str) -> None:
        self.answers.setdefault(node, {})[backend] = Support.no(reason)


def ask_support(nodes: Iterable[Node], backends: Mapping[str, SupportFn]) -> SupportMatrix:
    """Ask each backend about each compute node, in graph order.

    A support check must not raise; if one does, its exception becomes the reason, so
    one buggy plugin cannot stop an export, and the matrix keeps it among its ``faults``
    (lowering warns of it, the conformance kit fails it).
    """
    matrix = SupportMatrix(tuple(backends))
    for node in nodes:
        if not is_compute(node):
            continue
        if not _produces_tensors(node):
            no = Support.no("produces a symbolic size, not a tensor: runs as portable torch")
            matrix.answers[node.name] = {name: no for name in backends}
            continue
        row: dict[str, Support] = {}
        for name, check in backends.items():
            try:
                answer = check(node)
            except PrepareFailed as exc:
                answer = Support.no(str(exc))
                matrix.faults.setdefault(name, answer.reason)
            except Exception as exc:
                answer = Support.no(f"support() raised {type(exc).__name__}: {exc}")
                matrix.faults.setdefault(name, answer.reason)
            if not isinstance(answer, Support):
                answer = Support.no(f"support() returned {answer!r} instead of a Support")
                matrix.faults.setdefault(name, answer.reason)
            row[name] = answer
        matrix.answers[node.name] = row
    return matrix
