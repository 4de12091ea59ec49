"""The shape of manifest.json, checked before anything else reads it.

A program file comes from outside, so a damaged or edited manifest must end in one
`ManifestError` naming the field at fault, never in a KeyError, a TypeError or a
RecursionError deep inside the runtime or ``edgeport explain``. This module does two
things:

- `parse_manifest_json` parses the bytes within limits: a size cap, no NaN or
  infinite numbers, no integers beyond 64 bits, no duplicate keys (``{"version": 1, "version": 2}`` would be read
  differently by different parsers), and no nesting deeper than `MAX_DEPTH`;
- `check_manifest` checks every field's type and range against a small declarative
  schema, one per format version (``"version": true`` is not an integer, a step kind
  is "delegate" or "portable", a dim is a non-negative int or a symbol name).

Whether the plan makes sense (every value produced before it is read, every path a
verified file) is `plan_check`'s job; this module only says the JSON has the right shape.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Mapping

import numpy as np

from .arrays import STORED_DTYPES

# A real manifest is a few KiB to a few MiB (the placement report of a 50,000-node graph
# is the big part); anything past this is not a manifest, and is refused before parsing.
MAX_MANIFEST_BYTES = 64 * 2**20
# Depth of the deepest value, counted from the top object. Edgeport's own fields nest
# at most 8 deep; free-form ``metadata`` and backend options get the rest.
MAX_DEPTH = 32
MAX_DIM = 2**31 - 1  # a tensor dim; also bounds partition ids and counts
MAX_FILE_SIZE = 2**48  # bytes of one file inside a program

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """manifest.json is malformed; the message names the field (e.g. ``steps[0].kind``)."""


class UnknownFieldError(ManifestError):
    """A record has a field its schema does not know. Within a format version a newer
    edgeport adds optional fields (docs/program-format.md, "Versions"), so in an intact
    manifest of the newest version this edgeport reads, that is the likeliest cause:
    its reader says to upgrade rather than that the file is damaged."""


# -- parsing ------------------------------------------------------------------------------


def parse_manifest_json(data: bytes, what: str = "manifest.json") -> Any:
    """Parse JSON bytes from a program file within this module's limits."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{what} is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have")
    try:
        text = data.decode("utf-8")  # JSON's own encoding; `_nesting` reads bytes as UTF-8 text
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what} is not UTF-8 text ({exc})") from None
    if _nesting(data) > MAX_DEPTH:
        raise ManifestError(f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant,
                          parse_float=_finite_float, parse_int=_int64)
    except RecursionError:  # only if malformed text fooled `_nesting`; json would fail on it anyway
        raise ManifestError(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, a number out of range
        raise ManifestError(f"{what} is not valid JSON ({exc})") from None


_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))


def _nesting(data: bytes) -> int:
    """How deep the arrays and objects of JSON text nest, found before parsing (so deep
    text never reaches the recursive parser) with byte operations only: a 20 MB
    manifest takes tens of milliseconds. Escaped backslashes go first, then escaped
    quotes; every quote left delimits a string, and only brackets outside strings count."""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.translate(None, _NOT_STRUCTURE).split(b'"')[::2])
    brackets = np.frombuffer(outside, dtype=np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max(initial=0))


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {key!r} appears twice in one object")
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a program file may hold")


def _int64(text: str) -> int:
    """Integers beyond 64 bits are refused: most JSON readers cannot hold them, and no
    field of a program needs them."""
    value = int(text) if len(text) <= 20 else None
    if value is None or not -(2**63) <= value < 2**63:
        raise ValueError(f"{text[:24]}{'...' if len(text) > 24 else ''} is out of range")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


# -- the schema language: each check takes (value, path) and raises ManifestError ----------

Check = Callable[[Any, str], None]


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _fail(path: str, what: str, value: Any) -> None:
    shown = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else _kind(value)
    raise ManifestError(f"{path} must be {what}, got {shown[:80]}")


def text(*, choices: tuple[str, ...] = (), nonempty: bool = False, pattern: re.Pattern[str] | None = None,
         what: str = "") -> Check:
    """A string; optionally non-empty, one of ``choices``, or matching ``pattern``."""
    described = what or (f"one of {', '.join(map(repr, choices))}" if choices else
                         "a non-empty string" if nonempty else "a string")

    def check(value: Any, path: str) -> None:
        if (type(value) is not str or (nonempty and not value) or (choices and value not in choices)
                or (pattern and not pattern.fullmatch(value))):
            _fail(path, described, value)

    return check


def integer(low: int = 0, high: int = MAX_DIM) -> Check:
    """An int in [low, high]; ``true`` is not an int here, whatever Python thinks."""

    def check(value: Any, path: str) -> None:
        if type(value) is not int or not low <= value <= high:
            _fail(path, f"an integer in [{low}, {high}]", value)

    return check


def nullable(inner: Check) -> Check:
    def check(value: Any, path: str) -> None:
        if value is not None:
            inner(value, path)

    return check


def either(first: Check, second: Check, what: str) -> Check:
    def check(value: Any, path: str) -> None:
        for candidate in (first, second):
            try:
                return candidate(value, path)
            except ManifestError:
                pass
        _fail(path, what, value)

    return check


def array(item: Check, *, length: int | None = None) -> Check:
    def check(value: Any, path: str) -> None:
        if type(value) is not list or (length is not None and len(value) != length):
            _fail(path, "an array" if length is None else f"an array of {length}", value)
        for i, element in enumerate(value):
            item(element, f"{path}[{i}]")

    return check


def pair(first: Check, second: Check) -> Check:
    """A two-element array whose elements have their own checks, e.g. a range [low, high]."""

    def check(value: Any, path: str) -> None:
        array(lambda v, p: None, length=2)(value, path)
        first(value[0], f"{path}[0]")
        second(value[1], f"{path}[1]")

    return check


def mapping(value_check: Check, key_check: Check = text()) -> Check:
    """An object whose keys are data (names, paths), each value checked alike."""

    def check(value: Any, path: str) -> None:
        if type(value) is not dict:
            _fail(path, "an object", value)
        for key, item in value.items():
            key_check(key, f"{path} key {key!r}")
            item_path = f"{path}[{key!r}]"
            value_check(item, item_path)

    return check


def record(required: Mapping[str, Check], *, optional: Mapping[str, Check] | None = None,
           open_ended: bool = False) -> Check:
    """An object with fixed keys. ``open_ended`` allows keys the schema does not know
    (descriptive sections such as the report, which newer writers may extend)."""
    optional = optional or {}

    def check(value: Any, path: str) -> None:
        if type(value) is not dict:
            _fail(path, "an object", value)
        # unknown fields first: a newer field may stand in for a required one (a state's
        # "fill" for its "file"), and the new field is the one to name
        if not open_ended:
            unknown = sorted(set(value) - set(required) - set(optional))
            if unknown:
                raise UnknownFieldError(f"{path} has unknown field(s) {', '.join(map(repr, unknown))}")
        missing = [k for k in required if k not in value]
        if missing:
            raise ManifestError(f"{path} lacks {', '.join(map(repr, missing))}")
        for key, field_check in (*required.items(), *optional.items()):
            if key in value:
                field_check(value[key], f"{path}.{key}")

    return check


def free_form(value: Any, path: str) -> None:
    """Any JSON (the parser has already limited its depth and numbers)."""


def is_safe_path(name: str) -> bool:
    """Whether ``name`` may name an entry of a program file: relative and inside its
    folder wherever it is unzipped (not empty, no leading slash, no ``..``, no ``:`` of a
    drive letter). The one rule for the zip's entries (`program.load`) and the manifest's
    paths, so that `save`, which checks the manifest, never writes a file load refuses."""
    return bool(name) and not name.startswith(("/", "\\")) and ".." not in name.replace("\\", "/").split("/") \
        and ":" not in name


def _path(value: Any, path: str) -> None:
    if type(value) is not str or not is_safe_path(value):
        _fail(path, "a relative path in the program file (no '..', ':' or leading '/')", value)


# The entries of a program file that are not its files: the manifest and (version 2) its digest.
OWN_ENTRIES = ("manifest.json", "manifest.json.sha256")


def _file_path(value: Any, path: str) -> None:
    """A file the manifest lists: a safe path, and not one of the manifest's own entries
    (save wrote a second manifest.json, and the program never loaded again)."""
    _path(value, path)
    if value in OWN_ENTRIES:
        raise ManifestError(f"the manifest lists its own entry {value} as a file")


# -- the manifest -----------------------------------------------------------------------

NAME = text(nonempty=True)
PATH: Check = _path  # the name of a file inside the program, as `is_safe_path` allows
DTYPE = text(choices=STORED_DTYPES)
DIM = either(integer(), NAME, "a dim (a non-negative integer, or a symbol name)")
NAMES = array(NAME)

TENSOR_SPEC = record({"name": NAME, "dtype": DTYPE, "shape": array(DIM)})

STEP = record({
    "kind": text(choices=("delegate", "portable")),
    "partition": integer(),
    "inputs": NAMES,
    "outputs": NAMES,
    "backend": nullable(NAME),
    "artifact": nullable(PATH),
    "program": nullable(PATH),
    "reference": nullable(PATH),
}, optional={"entry": nullable(integer())})  # an entry of a merged artifact (Backend.merge)

ROW_UPDATE = record({"state": NAME, "dim": integer(), "positions": NAME, "rows": NAME})
STATE_PREFIX = record({"value": NAME, "length_of": NAME, "length_dim": integer(0)})

METHOD = record({
    "name": NAME,
    "inputs": array(TENSOR_SPEC),
    "outputs": array(TENSOR_SPEC),
    "input_values": NAMES,
    "output_values": NAMES,
    "steps": array(STEP),
    "state_reads": mapping(NAME, NAME),
    "state_writes": mapping(NAME, NAME),
    "symbols": mapping(pair(integer(), nullable(integer(0, 2**63 - 1))), NAME),
    "out_spec": text(nonempty=True),  # without it, outputs would come back as a flat list
}, optional={"row_updates": array(ROW_UPDATE),  # state written row by row, in place (state_rows.py)
             "state_prefixes": array(STATE_PREFIX)})  # state read as its first rows, in place (state_rows.py)

ARTIFACT = record({"backend": NAME, "backend_version": text(), "options": mapping(free_form),
                   "metadata": mapping(free_form)})

FILE = record({"size": integer(0, MAX_FILE_SIZE), "sha256": text(pattern=_SHA256, what="64 lowercase hex digits")})

# A state's initial value is its file's bytes, or every element 0 (``"fill": 0``, no
# file: a KV cache). plan_check requires exactly one of the two.
STATE = record({"dtype": DTYPE, "shape": array(integer())}, optional={"file": PATH, "fill": integer(0, 0)})

# The placement report is descriptive (explain and check read it, the runtime never
# does), so its records are open-ended: a newer writer may add facts to them.
REPORT_NODE = record({"name": NAME, "op": text(), "backend": NAME, "partition": integer(),
                      "reasons": mapping(text()), "source": text()}, open_ended=True)
REPORT_PARTITION = record({"id": integer(), "backend": NAME, "nodes": integer(), "node_names": NAMES,
                           "inputs": NAMES, "outputs": NAMES, "boundary_bytes": integer(0, 2**63 - 1),
                           "fallback": nullable(text())}, open_ended=True)
REPORT_VALUE = record({"dtype": text(), "shape": array(DIM), "bytes": integer(0, 2**63 - 1)}, open_ended=True)
REPORT = record({"nodes": array(REPORT_NODE), "partitions": array(REPORT_PARTITION)},
                optional={"values": mapping(REPORT_VALUE), "faults": mapping(text())}, open_ended=True)

_V1_FIELDS = {
    "format": text(choices=("edgeport",)),
    "version": integer(1, 1),
    "producer": mapping(text()),
    "methods": mapping(METHOD, NAME),
    "artifacts": mapping(ARTIFACT, PATH),
    "state": mapping(STATE, NAME),
    "files": mapping(FILE, _file_path),
    "report": mapping(REPORT, NAME),
}
SCHEMAS: dict[int, Check] = {
    1: record(_V1_FIELDS),
    # 2 adds the application's metadata (and the digest entry beside the manifest)
    2: record({**_V1_FIELDS, "version": integer(2, 2), "metadata": mapping(free_form)},
              optional={"shared_tensors": array(PATH)}),  # tensors several torch programs read
}


def check_manifest(data: Any, version: int) -> None:
    """Raise `ManifestError` unless ``data`` has the shape of a manifest of ``version``."""
    SCHEMAS[version](data, "manifest")
