"""The manifest's parser limits and schema language, on their own."""

import json
import random

import pytest

from edgeport.manifest_schema import (MAX_DEPTH, ManifestError, _nesting, array, integer, parse_manifest_json, record,
                                      text)


def _random_json(rng, depth=0):
    """JSON with strings full of brackets, quotes and backslashes: what could fool a scanner."""
    kind = rng.choice(("str", "num", "list", "dict") if depth < 12 else ("str", "num"))
    if kind == "str":
        return "".join(rng.choice('ab[]{}"\\\\/\n\u00e9') for _ in range(rng.randrange(8)))
    if kind == "num":
        return rng.choice((0, -3, 1.5, True, None))
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_random_json(rng, 99): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _depth(value):
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return 0 if children is None else 1 + max((_depth(c) for c in children), default=0)


def test_nesting_is_measured_exactly_before_parsing():
    rng = random.Random(0)
    for _ in range(2000):
        value = _random_json(rng)
        for text_form in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
            assert _nesting(text_form.encode()) == _depth(value), text_form


def test_deep_text_is_refused_without_recursion():
    with pytest.raises(ManifestError, match=f"nests deeper than {MAX_DEPTH} levels"):
        parse_manifest_json(b"[" * 1_000_000 + b"]" * 1_000_000)
    assert parse_manifest_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None


@pytest.mark.parametrize("value", [True, 1.0, "1", None, -1, 2**31])
def test_an_integer_is_an_int_in_range_and_never_a_bool(value):
    with pytest.raises(ManifestError, match=r"x must be an integer in \[0, 2147483647\]"):
        integer()(value, "x")


def test_records_name_the_field_at_fault():
    check = record({"steps": array(record({"kind": text(choices=("delegate", "portable"))}))})
    check({"steps": [{"kind": "portable"}]}, "m")
    with pytest.raises(ManifestError, match=r"m.steps\[1\].kind must be one of 'delegate', 'portable', got 'shell'"):
        check({"steps": [{"kind": "portable"}, {"kind": "shell"}]}, "m")
    with pytest.raises(ManifestError, match=r"m.steps\[0\] has unknown field\(s\) 'shell'"):
        check({"steps": [{"kind": "portable", "shell": "rm -rf /"}]}, "m")
