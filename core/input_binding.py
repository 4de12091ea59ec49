"""Which value of a call is which input of a method: by name where the call names them.

A method's inputs are the leaves of the example inputs it was exported with, in order,
and torch names each after its path: the forward's parameter, then each dict key or
sequence index inside it, joined by "_", lower-cased, every other character "_"
(``inp["Input-IDs"]`` is ``inp_input_ids``, ``t[1]["q"]`` is ``t_1_q``). Taking a call's
leaves in the order written gave ``program(y=b, x=a)`` a's place to b, and a dict
written in another key order its values swapped: a different answer, silently. So:

- keyword arguments are matched to the inputs left after the positional ones by those
  names; a keyword naming no input, or one a positional argument already gave, is an
  `InputError`;
- the leaves of a dict argument are matched to its group of inputs by their keys.

Where names cannot settle it (torch added a suffix to tell two inputs apart, or the
call's structure is not the exported one), the order written stands, as before; the
count, dtype and shape checks that follow still apply.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from .errors import InputError
from .output_tree import leaves

_NOT_NAME = re.compile(r"[^a-z0-9_]")
_POSITIONAL = re.compile(r"arr_\d+")  # numpy.savez's names for arrays given by position


def needs_names(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """True when order alone may misplace a value: keywords, or a dict anywhere."""
    return bool(kwargs) or any(_has_dict(a) for a in args)


def bind(args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str]) -> list[Any]:
    """The call's values in the method's input order (``names``)."""
    flat: list[Any] = []
    for arg in args:
        flat += _in_order(arg, (), names[len(flat):], exact=False)
    positional = set(names[:len(flat)])
    for key in kwargs:
        name = _name(key)
        if name in positional:
            raise InputError(f"input {key!r} is given twice, by position and by name",
                             hint=f"give it once; the inputs, in order, are {', '.join(names)}")
        if not any(n == name or n.startswith(name + "_") for n in names[len(flat):]):
            raise InputError(f"the method has no input named {key!r}", hint=f"its inputs are {', '.join(names)}")
    return flat + _in_order(dict(kwargs), (), names[len(flat):], exact=True)


def _in_order(value: Any, path: tuple, names: Sequence[str], *, exact: bool) -> list[Any]:
    """``value``'s leaves, matched to the first of ``names`` by their paths when every
    leaf's path names exactly one of them, else in the order written. A path names an
    input when it is the input's name (``exact``: keywords, whose path starts with the
    parameter) or ends it after a "_" (a positional argument's parameter is unknown)."""
    pairs, walked = _paths(value, path), leaves(value)
    if len(pairs) != len(walked) or any(a is not b for (_, a), b in zip(pairs, walked)):
        return walked  # a type torch's pytree walks its own way: its order
    group = names[:len(pairs)]
    chosen: dict[str, Any] = {}
    for parts, leaf in pairs:
        suffix = "_".join(_name(p) for p in parts)
        found = [n for n in group if n == suffix or (not exact and suffix and n.endswith("_" + suffix))]
        if len(found) != 1 or found[0] in chosen:
            return [leaf for _, leaf in pairs]
        chosen[found[0]] = leaf
    return [chosen[n] for n in group] if len(chosen) == len(group) else [leaf for _, leaf in pairs]


def _paths(value: Any, path: tuple) -> list[tuple[tuple, Any]]:
    """(path, leaf) for every leaf of ``value`` in torch's order: dict keys and sequence
    indices make the path."""
    if isinstance(value, dict):
        return [pair for key, child in value.items() for pair in _paths(child, (*path, key))]
    if type(value) in (tuple, list):
        return [pair for i, child in enumerate(value) for pair in _paths(child, (*path, i))]
    return [(path, value)]


def _has_dict(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return type(value) in (tuple, list) and any(_has_dict(v) for v in value)


def _name(part: Any) -> str:
    return _NOT_NAME.sub("_", str(part).lower())


def archive_order(arrays: Sequence[str], names: Sequence[str]) -> list[str] | None:
    """The arrays of an .npz, in the order of the inputs ``names``: by name, or, saved by
    position (``numpy.savez(path, a, b)``: arr_0, arr_1, ...), in that order. None when
    they are named otherwise: taken in the file's order, ``savez(path, y=..., x=...)``
    would give x y's values; and when an array is named after no input (a misspelt
    name, left out silently, would hide that its input was never given)."""
    if set(arrays) == set(names):
        return list(names)
    if all(_POSITIONAL.fullmatch(a) for a in arrays):
        return sorted(arrays, key=_position)
    return None


def _position(array: str) -> tuple[str, int]:
    """arr_2 before arr_10."""
    head, _, tail = array.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (array, 0)
