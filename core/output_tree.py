"""A method's output structure, stored as JSON and rebuilt around its output tensors.

Whatever nesting torch.export accepts comes back when the program runs: tuples, lists,
dicts (str, int, float, bool or None keys), OrderedDict, deque, namedtuples,
``torch.return_types`` (what ``torch.median(x, dim)`` returns), dataclasses and other
types registered with ``torch.utils._pytree``.

torch's own ``treespec_dumps`` cannot store namedtuples or ``torch.return_types``
unless each type is registered by name beforehand, and a program file must never be
unpickled, so classes are stored by name and found again without importing anything:

- a ``torch.return_types`` class comes back as itself;
- a namedtuple, dataclass or other registered type comes back as its own class when the
  module defining it is already imported (looked up in ``sys.modules``, never imported
  because a file names it) and it still has the same fields;
- otherwise a namedtuple or dataclass comes back as a stand-in with the same name and
  fields (equal by value and field access; ``isinstance`` against the original is
  False), and another custom type is an error naming the module to import;
- a ``defaultdict`` comes back as a plain dict (its default factory is code).

Programs written before this format held torch's ``treespec_dumps`` JSON; those still load.
``check_structure`` is the load-time check (it parses and counts values, building
nothing); every damaged structure is a ProgramError.

Reading needs no torch (a program runs where torch is not installed): without it, a
``torch.return_types`` value comes back as a plain tuple, and a custom pytree type,
which only torch's registry knows, is an error. Writing runs at export, with torch.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .arrays import torch_installed
from .errors import EdgeportError, ProgramError

if TYPE_CHECKING:
    import torch.utils._pytree as pytree

FORMAT = "edgeport-outputs"
VERSION = 1
MAX_DEPTH = 64  # far beyond real outputs; keeps a crafted file from recursing deeply
_KEYS: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


# -- writing ------------------------------------------------------------------------------


def dump_structure(spec: pytree.TreeSpec | None) -> str:
    """The JSON text for ``spec`` (torch.export's ``call_spec.out_spec``); "" for None.

    Raises EdgeportError when a node cannot be stored without code (a dict key of another
    type, a custom pytree type whose context is not JSON).
    """
    if spec is None:
        return ""
    return json.dumps({"format": FORMAT, "version": VERSION, "tree": _encode(spec)}, separators=(",", ":"))


def _encode(spec: pytree.TreeSpec) -> dict[str, Any]:
    import torch
    import torch.utils._pytree as pytree

    if spec.is_leaf():
        return {"type": "leaf"}
    children = [_encode(child) for child in spec.children()]
    kind, context = spec.type, spec.context
    if kind in (tuple, list):
        return {"type": kind.__name__, "children": children}
    if kind in (dict, collections.OrderedDict, collections.defaultdict):
        keys = context[1] if kind is collections.defaultdict else context
        name = "ordered_dict" if kind is collections.OrderedDict else "dict"
        return {"type": name, "keys": [_encode_key(k) for k in keys], "children": children}
    if kind is collections.deque:
        return {"type": "deque", "maxlen": context, "children": children}
    if pytree.is_structseq_class(kind) and getattr(torch.return_types, kind.__name__, None) is kind:
        return {"type": "return_type", "name": kind.__name__, "children": children}
    if kind is pytree.namedtuple:
        return {"type": "namedtuple", **_named(context), "fields": list(context._fields), "children": children}
    if dataclasses.is_dataclass(kind) and _is_field_lists(context):
        return {"type": "dataclass", **_named(kind), "fields": list(context[0]), "none_fields": list(context[1]),
                "children": children}
    return {"type": "custom", **_named(kind), "context": _dumpable_context(kind, context), "children": children}


def _named(cls: type) -> dict[str, str]:
    return {"module": cls.__module__, "name": cls.__qualname__}


def _encode_key(key: Any) -> list[Any]:
    if key is None:
        return ["none", None]
    for tag, cls in _KEYS.items():
        if type(key) is cls:
            return [tag, key]
    raise EdgeportError(
        f"the model returns a dict with a key of type {type(key).__name__} ({key!r}); it cannot be stored",
        hint="use str, int, float, bool or None keys in returned dicts",
    )


def _is_field_lists(context: Any) -> bool:
    return (isinstance(context, (list, tuple)) and len(context) == 2
            and all(isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names) for names in context))


def _dumpable_context(kind: type, context: Any) -> Any:
    import torch.utils._pytree as pytree

    serialized = pytree.SUPPORTED_SERIALIZED_TYPES.get(kind)
    to_dumpable = getattr(serialized, "to_dumpable_context", None)
    value = to_dumpable(context) if to_dumpable is not None else context
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise EdgeportError(
            f"the model returns a {kind.__qualname__}, whose pytree context cannot be stored as JSON",
            hint="register it with torch.utils._pytree.register_pytree_node(..., to_dumpable_context=..., "
            "from_dumpable_context=...), or return a tuple, dict or dataclass",
        ) from None
    return value


# -- reading ------------------------------------------------------------------------------


def restore_structure(outputs: Sequence[Any], text: str) -> Any:
    """``outputs`` (flat, in order) rebuilt into the structure ``text`` describes."""
    if not text:
        return list(outputs)
    structure = _parse(text)
    if structure.leaves != len(outputs):
        raise ProgramError(f"the method's output structure holds {structure.leaves} values, "
                           f"the method returns {len(outputs)}")
    return structure.build(iter(outputs))


def leaves(value: Any) -> list[Any]:
    """The values inside ``value`` in order, as torch's ``pytree.tree_leaves`` gives them
    (its own, where torch is imported: only then can a type be registered with it);
    otherwise tuples (namedtuples too), lists, dicts and deques are walked, and anything
    else is a value. Not importing torch here keeps a torch-free run torch-free."""
    if sys.modules.get("torch") is not None:
        import torch.utils._pytree as pytree

        return pytree.tree_leaves(value)
    found: list[Any] = []

    def walk(item: Any) -> None:
        if isinstance(item, (tuple, list, collections.deque)):
            for child in item:
                walk(child)
        elif isinstance(item, dict):
            for child in item.values():
                walk(child)
        else:
            found.append(item)

    walk(value)
    return found


def check_structure(text: str, outputs: int) -> None:
    """For load time: ``text`` is a structure this edgeport can rebuild around exactly
    ``outputs`` values; ProgramError otherwise."""
    if text and _parse(text).leaves != outputs:
        raise ProgramError(f"the method's output structure holds {_parse(text).leaves} values, "
                           f"the method returns {outputs}")


Builder = Callable[[Any], Any]  # consumes leaves from an iterator, returns the rebuilt value


@dataclasses.dataclass(frozen=True)
class _Structure:
    build: Builder
    leaves: int


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> _Structure:
    """Parse once per distinct text (a loaded program rebuilds on every run)."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProgramError(f"the method's output structure is not valid JSON: {exc}") from None
    if isinstance(document, dict) and document.get("format") == FORMAT:
        if document.get("version") != VERSION:
            raise ProgramError(f"the method's output structure has version {document.get('version')!r}; "
                               f"this edgeport reads version {VERSION}",
                               hint="upgrade edgeport to run this program")
        return _decoder(document.get("tree"), 0)
    return _torch_treespec(text)


def _torch_treespec(text: str) -> _Structure:
    """A structure written by torch's treespec_dumps (programs from before this format):
    tuples, lists and dicts read without torch; anything else with torch's reader."""
    plain = _plain_treespec(text)
    if plain is not None:
        return _decoder(plain, 0)
    if not torch_installed():
        raise ProgramError("the method's output structure was written by an older edgeport in torch's format, "
                           "which only torch reads", hint="install torch, or re-export the program")
    import torch.utils._pytree as pytree

    try:
        spec = pytree.treespec_loads(text)
    except Exception as exc:  # torch raises several types for a bad spec; all mean "damaged"
        raise ProgramError(f"the method's output structure cannot be read: {type(exc).__name__}: {exc}") from None

    def build(leaves: Any) -> Any:
        return pytree.tree_unflatten([next(leaves) for _ in range(spec.num_leaves)], spec)

    return _Structure(build, spec.num_leaves)


# torch's treespec type names of the containers our own format has, without torch
_TORCH_CONTAINERS = {"builtins.tuple": "tuple", "builtins.list": "list", "builtins.dict": "dict",
                     "collections.OrderedDict": "ordered_dict"}


def _plain_treespec(text: str) -> dict[str, Any] | None:
    """torch's treespec JSON (protocol 1) as a node of our format when it holds only
    leaves, tuples, lists and dicts with plain keys; None when it holds anything else."""
    try:
        protocol, root = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None
    if protocol != 1:
        return None

    def convert(node: Any, depth: int) -> dict[str, Any] | None:
        if depth > MAX_DEPTH or not isinstance(node, dict) or not isinstance(node.get("children_spec"), list):
            return None
        kind = node.get("type")
        if kind is None:
            return {"type": "leaf"}
        ours = _TORCH_CONTAINERS.get(kind) if isinstance(kind, str) else None
        children = [convert(child, depth + 1) for child in node["children_spec"]]
        if ours is None or any(child is None for child in children):
            return None
        converted: dict[str, Any] = {"type": ours, "children": children}
        if ours in ("dict", "ordered_dict"):
            try:
                keys = json.loads(node.get("context"))
                converted["keys"] = [_encode_key(k) for k in keys]
            except (TypeError, ValueError, EdgeportError):
                return None
        return converted

    return convert(root, 0)


def _decoder(node: Any, depth: int) -> _Structure:
    """The structure one JSON node describes; every malformed node is a ProgramError."""
    if depth > MAX_DEPTH:
        raise ProgramError(f"the method's output structure is nested deeper than {MAX_DEPTH}")
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise ProgramError(f"the method's output structure has a malformed node: {_short(node)}")
    kind = node["type"]
    if kind == "leaf":
        return _Structure(next, 1)
    children = node.get("children")
    if not isinstance(children, list):
        raise ProgramError(f"the method's output structure has a {kind} node without children")
    parts = [_decoder(child, depth + 1) for child in children]
    make = _MAKERS.get(kind)
    if make is None:
        raise ProgramError(f"the method's output structure has an unknown node type {kind!r}")
    combine = make(node, len(parts))

    def build(leaves: Any) -> Any:
        return combine([part.build(leaves) for part in parts])

    return _Structure(build, sum(part.leaves for part in parts))


Combine = Callable[[list[Any]], Any]


def _sequence(node: dict[str, Any], n: int) -> Combine:
    return tuple if node["type"] == "tuple" else list


def _mapping(node: dict[str, Any], n: int) -> Combine:
    keys = node.get("keys")
    if not isinstance(keys, list) or len(keys) != n:
        raise ProgramError("the method's output structure has a dict whose keys do not match its values")
    decoded = [_decode_key(k) for k in keys]
    cls = collections.OrderedDict if node["type"] == "ordered_dict" else dict
    return lambda values: cls(zip(decoded, values))


def _decode_key(key: Any) -> Any:
    if isinstance(key, list) and len(key) == 2:
        tag, value = key
        if tag == "none" and value is None:
            return None
        cls = _KEYS.get(tag) if isinstance(tag, str) else None
        if cls is not None and (type(value) is cls or (cls is float and type(value) is int)):
            return cls(value)
    raise ProgramError(f"the method's output structure has a malformed dict key: {_short(key)}")


def _deque(node: dict[str, Any], n: int) -> Combine:
    maxlen = node.get("maxlen")
    if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
        raise ProgramError(f"the method's output structure has a deque with maxlen {_short(maxlen)}")
    return lambda values: collections.deque(values, maxlen=maxlen)


def _return_type(node: dict[str, Any], n: int) -> Combine:
    name = node.get("name")
    if not isinstance(name, str) or name.startswith("_"):
        raise ProgramError(f"the method's output structure names an unknown torch.return_types.{_short(name)}")
    if not torch_installed():
        return tuple  # what a torch.return_types value is, less its field names
    import torch
    import torch.utils._pytree as pytree

    cls = getattr(torch.return_types, name, None)
    if cls is None or not pytree.is_structseq_class(cls):
        raise ProgramError(f"the method's output structure names an unknown torch.return_types.{_short(name)}")
    return lambda values: cls(values)


def _namedtuple(node: dict[str, Any], n: int) -> Combine:
    fields = _names(node.get("fields"), "fields")
    if len(fields) != n:
        raise ProgramError("the method's output structure has a namedtuple whose fields do not match its values")
    cls = _loaded_class(node)
    if not (_is_namedtuple_class(cls) and list(cls._fields) == fields):
        cls = _standin_namedtuple(_simple_name(node), tuple(fields))
    return lambda values: cls(*values)


def _dataclass(node: dict[str, Any], n: int) -> Combine:
    fields, none_fields = _names(node.get("fields"), "fields"), _names(node.get("none_fields"), "none_fields")
    if len(fields) != n:
        raise ProgramError("the method's output structure has a dataclass whose fields do not match its values")
    cls = _loaded_class(node)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)
            and {f.name for f in dataclasses.fields(cls) if f.init} == set(fields) | set(none_fields)):
        cls = _standin_dataclass(_simple_name(node), tuple(fields + none_fields))

    def make(values: list[Any]) -> Any:
        return cls(**dict(zip(fields, values)), **dict.fromkeys(none_fields))

    return make


def _custom(node: dict[str, Any], n: int) -> Combine:
    if not torch_installed():
        raise ProgramError(f"the method returns a {node.get('module')}.{node.get('name')}, a type registered with "
                           "torch.utils._pytree, which needs torch",
                           hint="install torch, or return a tuple, dict or dataclass from the model")
    import torch.utils._pytree as pytree

    cls = _loaded_class(node)
    registered = pytree.SUPPORTED_NODES.get(cls) if isinstance(cls, type) else None
    if registered is None:
        raise ProgramError(
            f"the method returns a {node.get('module')}.{node.get('name')}, which is not registered with "
            "torch.utils._pytree in this process",
            hint=f"import {node.get('module')} (which registers it) before running the program",
        )
    serialized = pytree.SUPPORTED_SERIALIZED_TYPES.get(cls)
    from_dumpable = getattr(serialized, "from_dumpable_context", None)
    context = from_dumpable(node.get("context")) if from_dumpable is not None else node.get("context")
    return lambda values: registered.unflatten_fn(values, context)


_MAKERS: dict[str, Callable[[dict[str, Any], int], Combine]] = {
    "tuple": _sequence, "list": _sequence, "dict": _mapping, "ordered_dict": _mapping, "deque": _deque,
    "return_type": _return_type, "namedtuple": _namedtuple, "dataclass": _dataclass, "custom": _custom,
}


def _loaded_class(node: dict[str, Any]) -> Any:
    """The class a node names, if its module is already imported; never imports."""
    module, name = node.get("module"), node.get("name")
    if not isinstance(module, str) or not isinstance(name, str) or "<locals>" in name:
        return None
    value: Any = sys.modules.get(module)
    for part in name.split("."):
        value = getattr(value, part, None) if value is not None else None
    return value


def _is_namedtuple_class(cls: Any) -> bool:
    return (isinstance(cls, type) and issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)
            and all(isinstance(f, str) for f in cls._fields))


def _names(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.isidentifier() for v in value):
        raise ProgramError(f"the method's output structure has malformed {what}: {_short(value)}")
    return value


def _simple_name(node: dict[str, Any]) -> str:
    name = node.get("name")
    last = name.rsplit(".", 1)[-1] if isinstance(name, str) else ""
    return last if last.isidentifier() else "Output"


@functools.lru_cache(maxsize=64)
def _standin_namedtuple(name: str, fields: tuple[str, ...]) -> type:
    try:
        return collections.namedtuple(name, fields)
    except ValueError as exc:  # duplicate or reserved field names in a damaged file
        raise ProgramError(f"the method's output structure has a namedtuple {name} that cannot be made: {exc}") from None


@functools.lru_cache(maxsize=64)
def _standin_dataclass(name: str, fields: tuple[str, ...]) -> type:
    try:
        return dataclasses.make_dataclass(name, fields, frozen=True)
    except (TypeError, ValueError) as exc:
        raise ProgramError(f"the method's output structure has a dataclass {name} that cannot be made: {exc}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
