"""A seeded fuzz test of the program loader.

Mutants of one small, real cpu program (a LiteRT delegate, a portable torch step,
program state, and kept torch references whose weight is a shared tensor): truncations, bit flips, byte-range edits, manifest edits (deleted
fields, swapped types, swapped outputs and values, version games, deep nesting, huge
numbers, duplicate keys), and zip tricks (duplicate names, compressed entries and a
zip bomb, unsafe paths, wrong declared sizes). Most manifest edits are re-sealed
(digest recomputed), so that the schema and plan checks, not the digest, must catch them.

For every mutant, `edgeport.load`, two calls and `edgeport explain` (table, JSON, HTML)
must end in a `ProgramError`, or give exactly the original's outputs (the mutation
changed nothing observable). Any other exception, a different answer, or a mutant
that takes more than `MAX_SECONDS` fails the test. The default run tries `DEFAULT_COUNT`
mutants; ``pytest -m fuzz`` runs `FUZZ_COUNT` more, with other seeds.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import random
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.utils._pytree as pytree
from click.testing import CliRunner

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.cli import cli
from edgeport.testing import registry_for
from program_zip import (DIGEST, MANIFEST, digest_line, manifest_bytes, pack, patch_central, patch_central_sizes,
                         read_entries, stored, unpack, write_entries)

DEFAULT_COUNT = 300
FUZZ_COUNT = 5000
MAX_SECONDS = 10.0  # per mutant; a sound mutant takes milliseconds (the machine is shared)
HANG_GUARD_SECONDS = 120  # past this the process dumps its stacks and exits: a hang, not a slow mutant


class Tiny(torch.nn.Module):
    """cpu takes the linear, relu, sum and the last add; erfinv runs as portable torch;
    ``calls`` is program state. Two outputs of different shapes: a swap is visible."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 256)  # 4 KiB of weight: the two references share it
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        y = torch.relu(self.linear(x))
        z = torch.erfinv(y.clamp(0, 0.5))
        return y.sum(-1), z * 2 + self.calls


# A copy, not a view: exporting a view (linspace(...).reshape(...)) trips over a
# range constraint torch.export invents for it, which is not what this test is about.
INPUT = torch.linspace(-1, 1, 8).reshape(2, 4).clone()


@dataclass(frozen=True)
class Original:
    data: bytes
    manifest: dict[str, Any]
    files: dict[str, bytes]
    outputs: list[Any]  # the outputs of two calls, in order (state changes between them)
    bombs: tuple[bytes, ...]  # prebuilt zip bombs: building one takes a second


REGISTRY = registry_for(CpuBackend())


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Original:
    torch.manual_seed(7)
    model = Tiny().eval()
    # Two methods over the same weights and state: their cpu partitions are one merged
    # artifact (an entry each), the shape of every LLM program.
    methods = {"forward": (model, (INPUT,)), "again": (model, (INPUT,))}
    program = edgeport.export_methods(methods, ["cpu"], keep_reference=True, registry=REGISTRY)
    steps = program.manifest.methods["forward"].steps
    assert {s.kind for s in steps} == {"delegate", "portable"}, steps
    assert any(s.entry is not None for s in steps), "the cpu artifacts were not merged"
    assert program.manifest.shared_tensors, "the references share no tensor"
    path = tmp_path_factory.mktemp("fuzz") / "tiny.edgeport"
    program.save(path)
    data = path.read_bytes()
    loaded = edgeport.load(path, registry=REGISTRY)
    outputs = [loaded(INPUT), loaded(INPUT)]
    manifest, files = unpack(data)
    return Original(data, manifest, files, outputs, _bombs(data))


def _bombs(data: bytes) -> tuple[bytes, ...]:
    """A 50 MB manifest (trailing spaces are valid JSON) and a 50 MB extra file, each
    deflated to a few hundred KB: a loader that inflates them has already lost."""
    entries = read_entries(data)
    huge = entries[0][1] + b" " * 50_000_000
    return (
        write_entries([(stored(MANIFEST, zipfile.ZIP_DEFLATED), huge), *entries[1:]]),
        write_entries([*entries, (stored("bomb.bin", zipfile.ZIP_DEFLATED), bytes(50_000_000))]),
    )


# -- mutations: each takes (rng, original) and returns (label, mutant bytes) ------------------

Mutation = Callable[[random.Random, Original], tuple[str, bytes]]


def truncate(rng, o):
    cut = rng.randrange(len(o.data))
    return f"truncate at {cut}", o.data[:cut]


def flip_bits(rng, o):
    data = bytearray(o.data)
    spots = [rng.randrange(len(data) * 8) for _ in range(rng.choice((1, 1, 2, 8)))]
    for bit in spots:
        data[bit // 8] ^= 1 << (bit % 8)
    return f"flip bits {spots}", bytes(data)


def edit_bytes(rng, o):
    data = bytearray(o.data)
    at, length = rng.randrange(len(data)), rng.choice((1, 4, 16, 64, 512))
    how = rng.choice(("random", "zeros", "ones", "delete", "insert", "duplicate"))
    if how == "delete":
        del data[at:at + length]
    elif how == "insert":
        data[at:at] = rng.randbytes(length)
    elif how == "duplicate":
        data[at:at] = data[at:at + length]
    else:
        fill = {"random": rng.randbytes(length), "zeros": bytes(length), "ones": b"\xff" * length}[how]
        data[at:at + length] = fill[: len(data) - at]
    return f"{how} {length} bytes at {at}", bytes(data)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        paths += _paths(child, prefix + (key,))
    return paths


def _pick_path(rng, manifest, want: Callable[[Any], bool] = lambda v: True) -> tuple | None:
    """A random path into one section (each section equally likely, so the long
    report does not crowd out the plan) whose value satisfies ``want``."""
    sections = [k for k in manifest if any(want(_get(manifest, p)) for p in _paths(manifest[k], (k,)))]
    if not sections:
        return None
    section = rng.choice(sections)
    return rng.choice([p for p in _paths(manifest[section], (section,)) if want(_get(manifest, p))])


def _get(node, path):
    for key in path:
        node = node[key]
    return node


ODD_VALUES = (None, True, False, 0, -1, 1, 2, 2**31, 10**30, 1.5, -0.0, "", "x", "forward", "cpu", "portable",
              "float32", "sum_1", "../escape", [], [1], ["x"], {}, {"a": 1})


def _edit(rng, manifest) -> str:
    """One edit of the manifest in place; returns what it did."""
    kind = rng.choice(("delete", "retype", "swap items", "swap values", "rename", "add field"))
    if kind == "delete":
        path = _pick_path(rng, manifest, lambda v: True)
        if len(path) < 1:
            return "no edit"
        parent = _get(manifest, path[:-1])
        del parent[path[-1]]
        return f"delete {path}"
    if kind == "retype":
        path = _pick_path(rng, manifest)
        value = copy.deepcopy(rng.choice(ODD_VALUES))
        if not path:
            return "no edit"
        _get(manifest, path[:-1])[path[-1]] = value
        return f"set {path} = {value!r}"
    if kind == "swap items":
        path = _pick_path(rng, manifest, lambda v: isinstance(v, list) and len(v) >= 2)
        if path is None:
            return "no edit"
        items = _get(manifest, path)
        i, j = rng.sample(range(len(items)), 2)
        items[i], items[j] = items[j], items[i]
        return f"swap {path}[{i}] and [{j}]"
    if kind == "swap values":
        path = _pick_path(rng, manifest, lambda v: isinstance(v, dict) and len(v) >= 2)
        if path is None:
            return "no edit"
        obj = _get(manifest, path)
        a, b = rng.sample(sorted(obj), 2)
        obj[a], obj[b] = obj[b], obj[a]
        return f"swap {path}.{a} and .{b}"
    if kind == "rename":
        names = sorted({v for p in _paths(manifest) if isinstance(v := _get(manifest, p), str) and 0 < len(v) < 40})
        path = _pick_path(rng, manifest, lambda v: isinstance(v, str) and v in names)
        if path is None:
            return "no edit"
        new = rng.choice(names)
        _get(manifest, path[:-1])[path[-1]] = new
        return f"rename {path} to {new!r}"
    path = _pick_path(rng, manifest, lambda v: isinstance(v, dict))
    _get(manifest, path)["extra"] = copy.deepcopy(rng.choice(ODD_VALUES))
    return f"add field {path}.extra"


def edit_manifest(rng, o, *, reseal: bool = True):
    manifest = copy.deepcopy(o.manifest)
    what = _edit(rng, manifest)
    if not reseal:  # an edit the digest must catch
        text = manifest_bytes(manifest)
        entries = [(MANIFEST, text), (DIGEST, digest_line(manifest_bytes(o.manifest))), *sorted(o.files.items())]
        return f"unsealed: {what}", write_entries(entries)
    return f"resealed: {what}", pack(manifest, o.files)


def edit_manifest_unsealed(rng, o):
    return edit_manifest(rng, o, reseal=False)


def version_games(rng, o):
    manifest = copy.deepcopy(o.manifest)
    choice = rng.choice(("value", "v1 downgrade", "v1 with metadata", "v2 unsealed", "v1 sealed"))
    if choice == "value":
        manifest["version"] = rng.choice((0, 1, 3, -1, True, False, "2", 2.0, None, 10**20, [2], {"v": 2}))
        return f"version {manifest['version']!r}", pack(manifest, o.files)
    if choice.startswith("v1"):
        manifest["version"] = 1
        if choice != "v1 with metadata":
            del manifest["metadata"]
        return choice, pack(manifest, o.files, digest=choice == "v1 sealed")
    return choice, pack(manifest, o.files, digest=False)


def deep_nesting(rng, o):
    depth = rng.choice((33, 64, 1000, 200_000))
    path = _pick_path(rng, o.manifest, lambda v: True) or ("metadata",)
    manifest = copy.deepcopy(o.manifest)
    marker = "@@deep@@"
    _get(manifest, path[:-1])[path[-1]] = marker
    text = manifest_bytes(manifest).replace(json.dumps(marker).encode(), b"[" * depth + b"]" * depth)
    return f"nest {depth} deep at {path}", pack(text, o.files)


def huge_numbers(rng, o):
    path = _pick_path(rng, o.manifest, lambda v: type(v) is int)
    number = rng.choice(("1" + "0" * 30, "9" * 4299, "9" * 5000, "1e999", "-1e999", "NaN", "Infinity", "1e308",
                         "-0", "4.0", "1E2"))
    manifest = copy.deepcopy(o.manifest)
    marker = "@@number@@"
    _get(manifest, path[:-1])[path[-1]] = marker
    text = manifest_bytes(manifest).replace(json.dumps(marker).encode(), number.encode())
    return f"set {path} = {number[:12]}", pack(text, o.files)


def duplicate_keys(rng, o):
    text = manifest_bytes(o.manifest)
    key = rng.choice((b'"version": 1', b'"version": 2', b'"format": "edgeport"', b'"metadata": {}'))
    at = rng.choice([i + 1 for i, c in enumerate(text) if c == ord("{")][:40])
    return f"insert {key.decode()} at {at}", pack(text[:at] + key + b"," + text[at:], o.files)


def zip_tricks(rng, o):
    entries = read_entries(o.data)
    names = [n for n, _ in entries]
    trick = rng.choice(("duplicate", "compress", "bomb", "unsafe name", "sizes", "drop", "unlisted", "encrypted",
                        "comment", "reorder"))
    if trick == "duplicate":
        name, data = rng.choice(entries)
        other = data + b" " if name == MANIFEST else rng.randbytes(len(data))
        return f"second {name}", write_entries(entries + [(name, rng.choice((data, other)))])
    if trick == "compress":
        pick = rng.choice(names)
        method = rng.choice((zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA))
        return f"{pick} compressed ({method})", write_entries(
            [(stored(n, method) if n == pick else n, d) for n, d in entries])
    if trick == "bomb":
        return "zip bomb", rng.choice(o.bombs)
    if trick == "unsafe name":
        pick, bad = rng.choice(names), rng.choice(("../x", "/abs", "C:x", "a/../../b", "dir\\..\\x", "a:b"))
        return f"{pick} renamed {bad!r}", write_entries([(bad if n == pick else n, d) for n, d in entries])
    if trick == "sizes":
        pick, size = rng.choice(names), rng.choice((0, 1, 2**31, 2**32 - 1, rng.randrange(10**6)))
        return f"{pick} declared {size} bytes", patch_central_sizes(o.data, pick, size)
    if trick == "drop":
        pick = rng.choice(names)
        return f"drop {pick}", write_entries([(n, d) for n, d in entries if n != pick])
    if trick == "unlisted":
        return "unlisted file", write_entries(entries + [(rng.choice(("extra.bin", "portable/x", "a/b/c")), b"x")])
    if trick == "encrypted":
        pick = rng.choice(names)
        return f"{pick} flagged encrypted", patch_central(o.data, pick, 8, b"\x01\x00")
    if trick == "comment":  # changes nothing that is read
        return "zip comment", write_entries(entries, comment=rng.randbytes(rng.randrange(1, 200)))
    shuffled = entries[:]
    rng.shuffle(shuffled)  # the order of entries is free
    return "entries reordered", write_entries(shuffled)


FAMILIES: list[tuple[Mutation, int]] = [
    (truncate, 2), (flip_bits, 3), (edit_bytes, 3), (edit_manifest, 10), (edit_manifest_unsealed, 1),
    (version_games, 2), (deep_nesting, 1), (huge_numbers, 1), (duplicate_keys, 1), (zip_tricks, 4),
]


# -- outcomes ------------------------------------------------------------------------------


class DifferentAnswer(AssertionError):
    pass


def _same(a: Any, b: Any) -> bool:
    leaves_a, spec_a = pytree.tree_flatten(a)
    leaves_b, spec_b = pytree.tree_flatten(b)
    return spec_a == spec_b and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in zip(leaves_a, leaves_b))


def _explain(path, html) -> None:
    """explain as a user runs it; a loadable program must explain, or fail with a ProgramError."""
    for args in (["explain", str(path)], ["explain", "--json", str(path)], ["explain", "--html", str(html), str(path)]):
        result = CliRunner().invoke(cli, args, env={"EDGEPORT_RAISE_ERRORS": "1"})
        if result.exception is not None and not isinstance(result.exception, edgeport.ProgramError):
            raise result.exception


def outcome(path, html, expected: list[Any]) -> str:
    try:
        program = edgeport.load(path, registry=REGISTRY)
    except edgeport.ProgramError:
        return "load: ProgramError"
    try:
        got = [program(INPUT), program(INPUT)]
    except edgeport.ProgramError:
        return "run: ProgramError"
    if not all(_same(g, e) for g, e in zip(got, expected)):
        raise DifferentAnswer(f"outputs {got} differ from {expected}")
    _explain(path, html)
    return "loads, same answer"


def fuzz(original: Original, tmp_path, seed: int, count: int) -> Counter:
    rng = random.Random(seed)
    families, weights = zip(*FAMILIES)
    histogram: Counter = Counter()
    failures = []
    slowest = (0.0, "")
    path, html = tmp_path / "mutant.edgeport", tmp_path / "mutant.html"
    for i in range(count):
        family = rng.choices(families, weights)[0]
        label, data = family(rng, original)
        path.write_bytes(data)
        faulthandler.dump_traceback_later(HANG_GUARD_SECONDS, exit=True)
        start = time.perf_counter()
        try:
            result = outcome(path, html, original.outputs)
        except Exception as exc:  # the finding: anything but a ProgramError or the same answer
            result = f"FAIL {type(exc).__name__}"
            failures.append(f"#{i} {family.__name__}: {label}: {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            faulthandler.cancel_dump_traceback_later()
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, f"#{i} {family.__name__}: {label}"))
        if elapsed > MAX_SECONDS:
            failures.append(f"#{i} {family.__name__}: {label}: took {elapsed:.1f} s")
        histogram[(family.__name__, result)] += 1
    _print_histogram(seed, count, histogram, slowest)
    assert not failures, f"{len(failures)} of {count} mutants failed:\n" + "\n".join(failures[:40])
    return histogram


def _print_histogram(seed, count, histogram, slowest) -> None:
    totals = Counter()
    for (_, result), n in histogram.items():
        totals[result] += n
    print(f"\nfuzz seed {seed}: {count} mutants: " + ", ".join(f"{r} {n}" for r, n in totals.most_common()))
    for (family, result), n in sorted(histogram.items()):
        print(f"  {family:24} {result:22} {n}")
    print(f"  slowest: {slowest[0] * 1000:.0f} ms ({slowest[1][:100]})")


def test_loader_fuzz(original, tmp_path):
    histogram = fuzz(original, tmp_path, seed=15, count=DEFAULT_COUNT)
    assert sum(n for (_, r), n in histogram.items() if r == "loads, same answer") > 0  # the harness runs programs


@pytest.mark.fuzz
@pytest.mark.slow
def test_loader_fuzz_many(original, tmp_path):
    fuzz(original, tmp_path, seed=2026, count=FUZZ_COUNT)
