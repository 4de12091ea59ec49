"""Every output structure torch.export accepts exports, saves, loads and comes back.

torch.median(x, dim) (a torch.return_types named tuple) used to fail every export with
torch's "No registered serialization name" (12 subtests of ExecuTorch's test_median.py).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
from typing import NamedTuple

import pytest
import torch
import torch.utils._pytree as pytree

import edgeport
from edgeport.output_tree import check_structure, dump_structure, restore_structure
from torch_backend import TorchOpsBackend, registry_with


class Pair(NamedTuple):
    low: torch.Tensor
    high: torch.Tensor


@dataclasses.dataclass
class Stats:
    mean: torch.Tensor
    spread: torch.Tensor
    note: torch.Tensor | None = None


torch.export.register_dataclass(Stats, serialized_type_name="test_output_structures.Stats")


class Box:
    """A custom pytree node: its context (a label) is JSON."""

    def __init__(self, label: str, items: list[torch.Tensor]) -> None:
        self.label, self.items = label, items


pytree.register_pytree_node(
    Box, lambda b: (b.items, b.label), lambda items, label: Box(label, list(items)),
    serialized_type_name="test_output_structures.Box",
)


def _local_namedtuple() -> type:
    return collections.namedtuple("Local", "first second")


LOCAL = _local_namedtuple()  # its qualname holds "<locals>": it can only come back as a stand-in

STRUCTURES = {
    "median": lambda x: torch.median(x, 1),
    "sort_and_max": lambda x: (torch.sort(x, 1), torch.max(x, 0)),
    "namedtuple": lambda x: Pair(x.relu(), x + 1),
    "local_namedtuple": lambda x: LOCAL(x + 1, [x * 2, x]),
    "dataclass": lambda x: Stats(x.mean(0), x.std(0)),
    "nested": lambda x: {"a": [x + 1, (x * 2, {"b": x - 1})], 3: x.relu(), None: x, 1.5: x * 3, True: x * 4},
    "ordered_dict_and_deque": lambda x: (collections.OrderedDict(z=x + 1, a=x * 2), collections.deque([x, x + 2], 3)),
    "single_tensor": lambda x: x + 1,
    "tuple_of_one": lambda x: (x * 2,),
    "custom_node": lambda x: Box("scores", [x + 1, x * 2]),
}


class Returns(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _same(actual, expected) -> None:
    """Same types at every level (the leaves equal), so the structure truly came back."""
    assert type(actual) is type(expected), (type(actual), type(expected))
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected)
    elif isinstance(expected, Box):
        assert actual.label == expected.label
        _same(actual.items, expected.items)
    elif dataclasses.is_dataclass(expected):
        _same(dataclasses.astuple(actual), dataclasses.astuple(expected))
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            _same(actual[key], expected[key])
    elif isinstance(expected, (tuple, list, collections.deque)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            _same(a, e)
        if isinstance(expected, collections.deque):
            assert actual.maxlen == expected.maxlen
    else:
        assert actual == expected


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each structure exported once, saved, and loaded back."""
    x = torch.randn(4, 5)
    folder = tmp_path_factory.mktemp("structures")
    programs = {}
    for name, fn in STRUCTURES.items():
        module = Returns(fn)
        program = edgeport.export(module, (x,), ["torchops"], registry=registry_with(TorchOpsBackend()))
        program.save(folder / f"{name}.edgeport")
        loaded = edgeport.load(folder / f"{name}.edgeport", registry=registry_with(TorchOpsBackend()))
        programs[name] = (module, program, loaded)
    return x, programs


@pytest.mark.parametrize("name", [n for n in STRUCTURES if n != "local_namedtuple"])
def test_the_structure_comes_back_as_the_same_types_before_and_after_saving(exported, name):
    x, programs = exported
    module, program, loaded = programs[name]
    with torch.no_grad():
        expected = module(x)
    _same(program(x), expected)
    _same(loaded(x), expected)


def test_median_returns_torch_return_types_median(exported):
    x, programs = exported
    values, indices = programs["median"][2](x)
    result = programs["median"][2](x)
    assert isinstance(result, torch.return_types.median)
    assert torch.equal(result.indices, torch.median(x, 1).indices) and torch.equal(indices, result.indices)
    torch.testing.assert_close(values, torch.median(x, 1).values)


def test_a_namedtuple_that_cannot_be_found_comes_back_equal_as_a_stand_in(exported):
    x, programs = exported
    result = programs["local_namedtuple"][2](x)
    expected = LOCAL(x + 1, [x * 2, x])
    assert type(result).__name__ == "Local" and result._fields == ("first", "second")
    assert not isinstance(result, LOCAL)
    torch.testing.assert_close(result.first, expected.first)
    _same(result.second, expected.second)


def test_a_dataclass_whose_module_is_not_imported_comes_back_as_a_stand_in_with_its_fields():
    spec = pytree.tree_structure(Stats(torch.ones(1), torch.zeros(1)))
    text = json.loads(dump_structure(spec))
    text["tree"]["module"] = "not_imported_anywhere"
    result = restore_structure([torch.ones(1), torch.zeros(1)], json.dumps(text))
    assert type(result).__name__ == "Stats" and not isinstance(result, Stats)
    assert (result.mean, result.spread, result.note) == (torch.ones(1), torch.zeros(1), None)


def test_a_custom_type_not_registered_in_this_process_is_a_program_error_naming_its_module():
    text = json.loads(dump_structure(pytree.tree_structure(Box("b", [torch.ones(1)]))))
    text["tree"]["module"] = "somebody_elses_package"
    with pytest.raises(edgeport.ProgramError, match="somebody_elses_package") as info:
        restore_structure([torch.ones(1)], json.dumps(text))
    assert "import somebody_elses_package" in info.value.hint


def test_a_defaultdict_comes_back_as_a_dict():
    d = collections.defaultdict(list, {"a": torch.ones(1)})
    result = restore_structure([torch.ones(1)], dump_structure(pytree.tree_structure(d)))
    assert type(result) is dict and list(result) == ["a"]


def test_programs_written_with_torchs_treespec_format_still_load():
    spec = pytree.tree_structure(({"a": torch.ones(1)}, [torch.zeros(1)]))
    result = restore_structure([torch.ones(1), torch.zeros(1)], pytree.treespec_dumps(spec))
    assert result == ({"a": torch.ones(1)}, [torch.zeros(1)])


def test_a_dict_key_that_cannot_be_stored_is_a_user_error_at_export():
    class Color(str):
        pass

    with pytest.raises(edgeport.EdgeportError, match="key of type Color"):
        dump_structure(pytree.tree_structure({Color("red"): torch.ones(1)}))


def test_the_load_time_check_counts_values_without_building_anything():
    text = dump_structure(pytree.tree_structure((torch.ones(1), [torch.ones(1), Box("b", [torch.ones(1)])])))
    check_structure(text, 3)
    with pytest.raises(edgeport.ProgramError, match="holds 3 values, the method returns 2"):
        check_structure(text, 2)
    with pytest.raises(edgeport.ProgramError, match="holds 3 values, the method returns 4"):
        restore_structure([torch.ones(1)] * 4, text)


DAMAGED = [
    "not json",
    '{"format": "edgeport-outputs", "version": 9, "tree": {"type": "leaf"}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "frozenset", "children": []}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "tuple"}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "tuple", "children": [{"type": "leaf"}]}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "dict", "keys": [["set", 1], ["str", "b"]], '
    '"children": [{"type": "leaf"}, {"type": "leaf"}]}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "return_type", "name": "__class__", '
    '"children": [{"type": "leaf"}, {"type": "leaf"}]}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "namedtuple", "name": "P", "module": "m", '
    '"fields": ["a", "a"], "children": [{"type": "leaf"}, {"type": "leaf"}]}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "namedtuple", "name": "P", "module": "m", '
    '"fields": ["import os"], "children": [{"type": "leaf"}]}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": {"type": "deque", "maxlen": -1, "children": []}}',
    '{"format": "edgeport-outputs", "version": 1, "tree": ' + '{"type": "list", "children": [' * 200 + "]}" * 200 + "}",
    "[" * 100000 + "]" * 100000,
]


@pytest.mark.parametrize("text", DAMAGED, ids=range(len(DAMAGED)))
def test_a_damaged_structure_is_a_program_error(text):
    with pytest.raises(edgeport.ProgramError):
        restore_structure([torch.ones(1), torch.ones(1)], text)


def test_mutated_structures_give_a_program_error_or_a_structure_never_anything_else():
    spec = pytree.tree_structure(STRUCTURES["nested"](torch.ones(1)))
    text = dump_structure(spec)
    leaves = [torch.ones(1)] * spec.num_leaves
    rng = random.Random(0)
    outcomes = collections.Counter()
    for _ in range(300):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice('{}[]",:0123456789abcdefghijklmnopqrstuvwxyz ')
        try:
            restore_structure(leaves, "".join(chars))
            outcomes["restored"] += 1
        except edgeport.ProgramError:
            outcomes["program error"] += 1
    assert set(outcomes) <= {"restored", "program error"} and outcomes["program error"] > 100
