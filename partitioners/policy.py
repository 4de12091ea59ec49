"""Assignment policies: given the support matrix, decide which backend runs each node.

A policy is a function ``(nodes, matrix, order) -> {node name: backend}``; nodes no
backend takes are assigned `PORTABLE` (they run as plain torch). Growth into
partitions is a separate step (`edgeport.partitioners.grow`), so a new policy (e.g.
cost-based) only has to choose, not to worry about cycles.
"""

from __future__ import annotations

import operator
from typing import Callable, Sequence

from torch.fx import Node

from edgeport.manifest import PORTABLE  # what no backend takes: a portable (torch) step

from .support import SupportMatrix, is_compute

Policy = Callable[[Sequence[Node], SupportMatrix, Sequence[str]], dict[str, str]]


def assign_by_priority(nodes: Sequence[Node], matrix: SupportMatrix, order: Sequence[str]) -> dict[str, str]:
    """The first backend in the user's order that supports a node gets it."""
    assignment: dict[str, str] = {}
    for node in nodes:
        if is_compute(node):
            assignment[node.name] = next((b for b in order if matrix.supports(node.name, b)), PORTABLE)
        elif node.op == "call_function" and node.target is operator.getitem:
            # a tuple element lives wherever the op producing the tuple runs
            assignment[node.name] = assignment[node.args[0].name]
    return assignment
