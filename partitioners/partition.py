"""One call from a graph and a support matrix to partitions in run order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from torch.fx import Node

from edgeport.backend import PartitionRules

from .grow import Partition, propose_partitions
from .policy import Policy, assign_by_priority
from .rules import Demotion, demote_rule_breakers
from .support import SupportMatrix


@dataclass
class PartitionPlan:
    """The result of partitioning: who runs each node, and the partitions in order.

    ``demoted`` records nodes a backend supported but did not get, because their
    partition broke the backend's rules; the report shows it next to their reasons.
    """

    assignment: dict[str, str]
    partitions: list[Partition]
    demoted: dict[str, Demotion] = field(default_factory=dict)


def partition_graph(
    nodes: Sequence[Node],
    matrix: SupportMatrix,
    order: Sequence[str],
    rules: Mapping[str, PartitionRules] | None = None,
    policy: Policy = assign_by_priority,
) -> PartitionPlan:
    """Assign nodes with ``policy``, grow partitions, then apply each backend's rules.

    Rules only ever move nodes to portable, so the loop ends after at most one round
    per partition.
    """
    assignment = policy(nodes, matrix, order)
    demoted: dict[str, Demotion] = {}
    while True:
        partitions = propose_partitions(nodes, assignment)
        moved = demote_rule_breakers(partitions, assignment, rules or {})
        if not moved:
            return PartitionPlan(assignment, partitions, demoted)
        demoted.update(moved)
