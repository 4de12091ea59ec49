"""Growing assigned nodes into partitions whose contraction cannot create a cycle.

One pass in graph (topological) order, linear in nodes and edges, so a 50,000-node
graph partitions in well under a second.

Each node gets a *level*: the number of backend changes on the longest path into it,

    L(n) = max(L(p) + (1 if backend(p) != backend(n) else 0)  for predecessors p; 0)

and the partitions are the groups of nodes with equal (backend, level). Invariant: an
edge between two different groups always goes to a strictly higher level (same backend
and different level means a higher one; a backend change adds one), so the level orders
the groups topologically and contracting them cannot create a cycle.

A node that reads only graph inputs and weights (a dequantized weight, a first op on an
input) has level 0 however late it is read. When all its readers form one group on its
backend, it joins that group instead: otherwise it would be a partition of its own, or,
worse, a weight computed in one partition and passed to another as a runtime tensor.

Not the fewest partitions possible (that problem is hard), but never a wrong one.
Finer schemes that track levels per backend can merge more, and can also merge two
unconnected nodes into a cycle; the random-graph tests exist to catch exactly that.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Mapping, Sequence

from torch.fx import Node


@dataclass(frozen=True)
class Partition:
    """Nodes (in graph order) that run together as one step on one backend."""

    id: int
    backend: str
    nodes: tuple[Node, ...]


def propose_partitions(nodes: Sequence[Node], assignment: Mapping[str, str]) -> list[Partition]:
    """Group assigned nodes into cycle-free partitions, returned in an order that runs.

    ``nodes`` must be in topological order; only nodes named in ``assignment`` are
    partitioned (placeholders and the output stay outside every partition).
    """
    level: dict[str, int] = {}
    groups: dict[tuple[str, int], list[Node]] = {}
    for node in nodes:
        backend = assignment.get(node.name)
        if backend is None:
            continue
        lvl = 0
        for pred in node.all_input_nodes:
            pred_level = level.get(pred.name)
            if pred_level is not None:  # None: a placeholder, which constrains nothing
                lvl = max(lvl, pred_level + (assignment[pred.name] != backend))
        level[node.name] = lvl
    _sink_sources(nodes, assignment, level)
    for node in nodes:
        if node.name in level:
            groups.setdefault((assignment[node.name], level[node.name]), []).append(node)
    return _in_run_order(list(groups.values()), assignment)


def _sink_sources(nodes: Sequence[Node], assignment: Mapping[str, str], level: dict[str, int]) -> None:
    """Move each node with no assigned predecessor into its readers' group when they
    all form one group on its own backend: the edges into that group become internal
    and no new edge between groups appears, so the invariant holds. (A value read by
    several groups stays where it is: moving it would only trade one crossing for
    another.) Walked in reverse order, so a chain of such nodes follows its last member."""
    for node in reversed(nodes):
        name = node.name
        if name not in level or any(p.name in level for p in node.all_input_nodes):
            continue
        groups = {(assignment[u.name], level[u.name]) for u in node.users if u.name in level}
        if len(groups) == 1:
            backend, target = groups.pop()
            if backend == assignment[name] and target > level[name]:
                level[name] = target


def _in_run_order(groups: list[list[Node]], assignment: Mapping[str, str]) -> list[Partition]:
    """Topologically sort the contracted graph; ties go to the group seen first, so
    independent work keeps the order the model wrote it in."""
    group_of = {node.name: g for g, members in enumerate(groups) for node in members}
    successors: list[set[int]] = [set() for _ in groups]
    indegree = [0] * len(groups)
    for g, members in enumerate(groups):
        for node in members:
            for user in node.users:
                h = group_of.get(user.name)
                if h is not None and h != g and h not in successors[g]:
                    successors[g].add(h)
                    indegree[h] += 1
    ready = [g for g in range(len(groups)) if indegree[g] == 0]
    heapq.heapify(ready)
    ordered: list[Partition] = []
    while ready:
        g = heapq.heappop(ready)
        members = groups[g]
        ordered.append(Partition(len(ordered), assignment[members[0].name], tuple(members)))
        for h in successors[g]:
            indegree[h] -= 1
            if indegree[h] == 0:
                heapq.heappush(ready, h)
    if len(ordered) != len(groups):  # cannot happen if the invariant holds
        raise RuntimeError("partition growth produced a cycle; please report this graph")
    return ordered
