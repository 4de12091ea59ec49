"""What lowering a method decided, as data: each partition's compile outcome, and where
every node went (`Placement`), which the placement report reads field by field.

A delegated partition's compile ends one of three ways:

- `Compiled`: its backend returned an artifact;
- `FellBack`: the compile failed (or declined nodes it was never given) and no other
  backend supports its nodes; the partition runs as portable torch, and the report
  shows the reason next to each of its nodes (when another backend does, the failure
  is turned into `DeclinedNodes` of every node, lowering.py);
- `DeclinedNodes`: the toolchain refused particular nodes; they become "no" answers of
  that backend and the method is partitioned again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

from torch.fx import Node

from edgeport.partitioners.grow import Partition
from edgeport.partitioners.partition import PartitionPlan
from edgeport.partitioners.support import SupportMatrix

from .backend import Artifact


@dataclass(frozen=True)
class Compiled:
    artifact: Artifact
    seconds: float = field(default=0.0, compare=False)  # the backend's compile call, wall clock


@dataclass(frozen=True)
class FellBack:
    """The partition runs as portable torch: ``backend`` failed to compile it, for ``reason``."""

    backend: str
    reason: str
    seconds: float = field(default=0.0, compare=False)  # until the compile call raised


@dataclass(frozen=True)
class DeclinedNodes:
    """``backend``'s toolchain refused these nodes (node name -> reason); a multi-output
    op's ``getitem`` is named by the op producing it, since it runs wherever that runs."""

    backend: str
    reasons: Mapping[str, str]


Outcome = Union[Compiled, FellBack, DeclinedNodes]
PartitionKey = tuple[str, tuple[str, ...]]  # backend, node names: the same nodes compile once


def partition_key(partition: Partition) -> PartitionKey:
    return partition.backend, tuple(n.name for n in partition.nodes)


@dataclass(frozen=True)
class Placement:
    """Where one method's nodes went: its graph's nodes in order, every backend's support
    answers, the final partition plan, and the compile outcome of each delegated partition."""

    nodes: Sequence[Node]
    matrix: SupportMatrix
    plan: PartitionPlan
    outcomes: Mapping[PartitionKey, Outcome]

    def outcome(self, partition: Partition) -> Outcome | None:
        """The compile outcome of ``partition``; None for a portable one."""
        return self.outcomes.get(partition_key(partition))

    def fallbacks(self) -> dict[int, FellBack]:
        """Partition id -> why its compile failed, for the partitions that fell back."""
        return {p.id: o for p in self.plan.partitions if isinstance(o := self.outcome(p), FellBack)}
