import operator
import random

import pytest
import torch
from torch.fx import Graph

from edgeport.backend import PartitionRules, Support
from edgeport.partitioners.grow import propose_partitions
from edgeport.partitioners.partition import partition_graph
from edgeport.partitioners.policy import PORTABLE, assign_by_priority
from edgeport.partitioners.support import ask_support

aten = torch.ops.aten


def random_dag(n: int, seed: int, max_preds: int = 3) -> Graph:
    rng = random.Random(seed)
    graph = Graph()
    values = [graph.placeholder("x")]
    for _ in range(n):
        preds = rng.sample(values, min(len(values), rng.randint(1, max_preds)))
        node = values[0]
        for p in preds:
            node = graph.call_function(rng.choice([aten.add.Tensor, aten.mul.Tensor]), (p, node)) if node is not p else p
        values.append(graph.call_function(rng.choice([aten.relu.default, aten.neg.default]), (node,)))
    graph.output(values[-1])
    return graph


def check_partitions(nodes, assignment, partitions):
    """Every compute node in exactly one partition of its backend, and running the
    partitions in the returned order never reads a value that is not computed yet."""
    placed = [n for p in partitions for n in p.nodes]
    assert sorted(n.name for n in placed) == sorted(assignment)
    assert len(placed) == len(set(placed))
    done = {n for n in nodes if n.op == "placeholder"}
    for p in partitions:
        assert {assignment[n.name] for n in p.nodes} == {p.backend}
        members = set(p.nodes)
        for node in p.nodes:
            for arg in node.all_input_nodes:
                assert arg in members or arg in done, f"{node} reads {arg} before it is computed"
        done |= members


@pytest.mark.parametrize("seed", range(30))
def test_random_dags_partition_without_cycles(seed):
    graph = random_dag(60, seed)
    nodes = list(graph.nodes)
    rng = random.Random(seed)
    assignment = {n.name: rng.choice(["a", "b", PORTABLE]) for n in nodes if n.op == "call_function"}
    check_partitions(nodes, assignment, propose_partitions(nodes, assignment))


def test_diamond_around_unsupported_node_needs_two_partitions():
    # x -> a(relu) -> b(neg, unsupported) -> c(add) ; a -> c : c cannot join a's partition
    graph = Graph()
    x = graph.placeholder("x")
    a = graph.call_function(aten.relu.default, (x,))
    b = graph.call_function(aten.neg.default, (a,))
    c = graph.call_function(aten.add.Tensor, (a, b))
    graph.output(c)
    nodes = list(graph.nodes)
    assignment = {a.name: "be", b.name: PORTABLE, c.name: "be"}
    partitions = propose_partitions(nodes, assignment)
    check_partitions(nodes, assignment, partitions)
    assert [p.backend for p in partitions] == ["be", PORTABLE, "be"]


def test_unconnected_nodes_of_one_level_never_form_a_cycle():
    # x1 -> y2 and x2 -> y1 across two backends: grouping x1 with y1 and x2 with y2
    # would contract into a cycle (found by the random-graph test in an earlier design)
    graph = Graph()
    x = graph.placeholder("x")
    x1 = graph.call_function(aten.relu.default, (x,))
    x2 = graph.call_function(aten.neg.default, (x,))
    y1 = graph.call_function(aten.add.Tensor, (x1, x2))
    y2 = graph.call_function(aten.mul.Tensor, (x2, x1))
    graph.output((y1, y2))
    nodes = list(graph.nodes)
    assignment = {x1.name: "a", y1.name: "a", x2.name: "b", y2.name: "b"}
    check_partitions(nodes, assignment, propose_partitions(nodes, assignment))


def test_unsupported_input_meeting_a_chain_splits_it_once():
    graph = Graph()
    x, y = graph.placeholder("x"), graph.placeholder("y")
    a0 = graph.call_function(aten.neg.default, (x,))
    a = graph.call_function(aten.relu.default, (a0,))
    u = graph.call_function(aten.neg.default, (y,))
    c = graph.call_function(aten.add.Tensor, (a, u))
    graph.output(c)
    nodes = list(graph.nodes)
    assignment = {a0.name: "be", a.name: "be", u.name: PORTABLE, c.name: "be"}
    partitions = propose_partitions(nodes, assignment)
    check_partitions(nodes, assignment, partitions)
    assert [(p.backend, len(p.nodes)) for p in partitions] == [("be", 2), (PORTABLE, 1), ("be", 1)]


def test_a_node_reading_only_inputs_joins_its_readers_partition():
    # a dequantized weight (or a first op on an input) is level 0 however late it is
    # read; it joins its reader instead of making a partition (and a runtime weight) of its own
    graph = Graph()
    x, y = graph.placeholder("x"), graph.placeholder("y")
    a = graph.call_function(aten.relu.default, (x,))
    u = graph.call_function(aten.neg.default, (y,))
    c = graph.call_function(aten.add.Tensor, (a, u))
    graph.output(c)
    nodes = list(graph.nodes)
    assignment = {a.name: "be", u.name: PORTABLE, c.name: "be"}
    partitions = propose_partitions(nodes, assignment)
    check_partitions(nodes, assignment, partitions)
    assert [(p.backend, [n.name for n in p.nodes]) for p in partitions] == [(PORTABLE, [u.name]), ("be", [a.name, c.name])]


def test_getitem_follows_its_producer_and_support_reasons_are_kept():
    graph = Graph()
    x = graph.placeholder("x")
    split = graph.call_function(aten.split.Tensor, (x, 2))
    first = graph.call_function(operator.getitem, (split, 0))
    relu = graph.call_function(aten.relu.default, (first,))
    graph.output(relu)
    for node, val in ((x, torch.empty(4)), (first, torch.empty(2)), (relu, torch.empty(2))):
        node.meta["val"] = val
    split.meta["val"] = (torch.empty(2), torch.empty(2))
    nodes = list(graph.nodes)
    matrix = ask_support(nodes, {"be": lambda n: Support.yes() if n.target == aten.relu.default else Support.no("no split")})
    assignment = assign_by_priority(nodes, matrix, ["be"])
    assert assignment[first.name] == assignment[split.name] == PORTABLE
    assert matrix.reasons(split.name) == {"be": "no split"}
    assert "getitem" not in matrix.answers


def chain(*ops) -> Graph:
    graph = Graph()
    value = graph.placeholder("x")
    value.meta["val"] = torch.empty(1)
    for op in ops:
        value = graph.call_function(op, (value,))
        value.meta["val"] = torch.empty(1)
    graph.output(value)
    return graph


def test_rules_hand_small_partitions_back_to_portable():
    relu, neg = aten.relu.default, aten.neg.default
    nodes = list(chain(relu, neg, relu, relu).nodes)
    matrix = ask_support(nodes, {"be": lambda n: Support.yes() if n.target == relu else Support.no("x")})
    plan = partition_graph(nodes, matrix, ["be"], {"be": PartitionRules(min_nodes=2)})
    assert [(p.backend, len(p.nodes)) for p in plan.partitions] == [(PORTABLE, 2), ("be", 2)]
    assert [(d.backend, d.reason) for d in plan.demoted.values()] == [
        ("be", "partition has 1 node(s), fewer than the backend's minimum of 2")]


def test_never_alone_ops_do_not_make_a_partition_of_their_own():
    relu, neg, view = aten.relu.default, aten.neg.default, aten.view.default
    nodes = list(chain(view, neg, relu, view).nodes)
    matrix = ask_support(nodes, {"be": lambda n: Support.yes() if n.target != neg else Support.no("x")})
    plan = partition_graph(nodes, matrix, ["be"], {"be": PartitionRules(never_alone=frozenset({view}))})
    assert [(p.backend, len(p.nodes)) for p in plan.partitions] == [(PORTABLE, 2), ("be", 2)]


def test_a_raising_support_check_becomes_a_reason():
    graph = random_dag(3, seed=1)
    nodes = list(graph.nodes)
    for n in nodes:
        n.meta["val"] = torch.empty(1)

    def broken(node):
        raise ValueError("boom")

    matrix = ask_support(nodes, {"be": broken})
    reasons = [matrix.reasons(n.name)["be"] for n in nodes if n.op == "call_function"]
    assert reasons and all("support() raised ValueError: boom" in r for r in reasons)
