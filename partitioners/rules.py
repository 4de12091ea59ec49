"""Backend partition rules: hand partitions a backend does not want back to portable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from edgeport.backend import PartitionRules

from .grow import Partition
from .policy import PORTABLE
from .support import is_compute


def violation(partition: Partition, rules: PartitionRules) -> str | None:
    """Why ``partition`` breaks its backend's rules, or None if it keeps them."""
    compute = [n for n in partition.nodes if is_compute(n)]
    if len(compute) < rules.min_nodes:
        return f"partition has {len(compute)} node(s), fewer than the backend's minimum of {rules.min_nodes}"
    if rules.never_alone and all(n.target in rules.never_alone or str(n.target) in rules.never_alone for n in compute):
        ops = ", ".join(sorted({str(n.target) for n in compute}))
        return f"partition holds only ops the backend never takes alone ({ops})"
    return None


@dataclass(frozen=True)
class Demotion:
    """A node ``backend`` supported but did not get: its partition broke the backend's rules."""

    backend: str
    reason: str


def demote_rule_breakers(
    partitions: list[Partition],
    assignment: dict[str, str],
    rules: Mapping[str, PartitionRules],
) -> dict[str, Demotion]:
    """Move the nodes of every partition that breaks its rules to portable.

    Returns {node name: why} for the nodes moved (empty when nothing changed).
    """
    moved: dict[str, Demotion] = {}
    for partition in partitions:
        if partition.backend == PORTABLE:
            continue
        reason = violation(partition, rules.get(partition.backend, PartitionRules()))
        if reason:
            for node in partition.nodes:
                assignment[node.name] = PORTABLE
                moved[node.name] = Demotion(partition.backend, reason)
    return moved
