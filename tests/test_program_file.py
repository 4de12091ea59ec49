"""The .edgeport file: round trip, the manifest digest, verification of damaged and
edited files, and the golden programs: format 1, and format 2 with shared tensors."""

import hashlib
import io
import json
import os
import time
import zipfile

import pytest
import torch
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from edgeport.manifest_schema import MAX_DEPTH
from program_zip import (DIGEST, MANIFEST, digest_line, manifest_bytes, pack, patch_central_sizes, read_entries, stored,
                         unpack, write_entries)
from torch_backend import TorchOpsBackend, registry_with

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_v1.edgeport")
GOLDEN_SHARED = os.path.join(os.path.dirname(__file__), "data", "golden_v2_shared_tensors.edgeport")


class Small(torch.nn.Module):
    """Its state starts at 1 so that it is stored as a file (a state of zeros is stored
    as ``"fill": 0``, without one); the golden program was written starting at 0."""

    def __init__(self, start: float = 1.0):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.register_buffer("steps", torch.full((1,), start))

    def forward(self, x):
        self.steps.add_(1)
        return torch.relu(self.linear(x)).sigmoid() + self.steps


def golden_inputs():
    return (torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8,)


def make_golden(path):
    torch.manual_seed(1234)
    program = edgeport.export(Small().eval(), golden_inputs(), ["torchops"], registry=registry_with(TorchOpsBackend()))
    program.save(path)


class Projection(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(32, 64)  # an 8 KiB weight: shared (shared_tensors.MIN_BYTES)

    def forward(self, x):
        return torch.relu(self.linear(x))


def shared_golden_inputs():
    x = torch.arange(4 * 32, dtype=torch.float32).reshape(4, 32) / 128
    return {"one": (x[:1],), "many": (x,)}


def make_shared_golden(path):
    """Two methods whose portable steps (the linear; torchops takes the relu) read one
    weight, stored once."""
    torch.manual_seed(1234)
    module = Projection().eval()
    program = edgeport.export_methods({m: (module, x) for m, x in shared_golden_inputs().items()}, ["torchops"],
                                      registry=registry_with(TorchOpsBackend()))
    program.save(path)


class TwoOutputs(torch.nn.Module):
    """Two outputs of different shapes, so a swap of them is a different answer."""

    def forward(self, x):
        y = torch.relu(x)
        return y.sum(-1), torch.sigmoid(y) * 2


@pytest.fixture(scope="module")
def program_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.edgeport"
    make_golden(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def two_outputs_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("two") / "two.edgeport"
    program = edgeport.export(TwoOutputs(), (torch.randn(2, 3),), ["torchops"],
                              registry=registry_with(TorchOpsBackend()))
    program.save(path)
    return path.read_bytes()


@pytest.fixture
def program_file(tmp_path, program_bytes):
    path = tmp_path / "small.edgeport"
    path.write_bytes(program_bytes)
    return path


def load(path):
    return edgeport.load(path, registry=registry_with(TorchOpsBackend()))


def load_bytes(tmp_path, data):
    path = tmp_path / "edited.edgeport"
    path.write_bytes(data)
    return load(path)


def first_artifact(manifest):
    """The path of the program's first delegate artifact (its name carries a partition id)."""
    return sorted(manifest["artifacts"])[0]


def resealed(data, change):
    """The program with ``change(manifest)`` applied and the digest recomputed: an edit
    that only the schema and plan checks can catch."""
    manifest, files = unpack(data)
    change(manifest)
    return pack(manifest, files)


# -- writing -------------------------------------------------------------------------------


def test_saved_program_is_stored_uncompressed_never_pickled_and_sealed(program_file):
    with zipfile.ZipFile(program_file) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert z.namelist()[:2] == [MANIFEST, DIGEST]
        for name in z.namelist():
            assert not z.read(name).startswith(b"\x80"), f"{name} looks like a pickle"
        raw = z.read(MANIFEST)
        # sha256sum's own format, so `sha256sum -c manifest.json.sha256` checks an unzipped program
        assert z.read(DIGEST) == f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n".encode()
    manifest = json.loads(raw)
    assert (manifest["format"], manifest["version"], manifest["metadata"]) == ("edgeport", 2, {})
    assert all(len(a["sha256"]) == 64 for a in manifest["files"].values())


def test_saving_twice_gives_the_same_bytes(program_file, tmp_path):
    load(program_file).save(tmp_path / "again.edgeport")
    assert (tmp_path / "again.edgeport").read_bytes() == program_file.read_bytes()


def test_metadata_round_trips(program_file, tmp_path):
    program = load(program_file)
    program.manifest.metadata["llm"] = {"eos": [2, 7], "name": "tiny", "rope": {"theta": 1e4}}
    program.save(tmp_path / "meta.edgeport")
    assert load(tmp_path / "meta.edgeport").manifest.metadata == {"llm": {"eos": [2, 7], "name": "tiny",
                                                                          "rope": {"theta": 1e4}}}


def _nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("metadata", [{"bad": object()}, {"nan": float("nan")}, {"deep": _nested(MAX_DEPTH)}])
def test_metadata_that_would_not_load_is_refused_at_save(program_file, tmp_path, metadata):
    program = load(program_file)
    program.manifest.metadata.update(metadata)
    with pytest.raises(edgeport.ProgramError, match="cannot be saved"):
        program.save(tmp_path / "meta.edgeport")
    assert not os.path.exists(tmp_path / "meta.edgeport")


@pytest.mark.parametrize("name, message", [("notes/a:b.txt", "must be a relative path"),
                                           ("notes/../x.txt", "must be a relative path"),
                                           ("/abs.txt", "must be a relative path"),
                                           ("manifest.json", "lists its own entry manifest.json as a file")])
def test_a_file_name_load_would_refuse_is_refused_at_save(program_file, tmp_path, name, message):
    """An application's file under such a name was saved, and the program never loaded
    again ("unsafe path"): save and load now hold names to one rule."""
    from edgeport.program import file_info

    program = load(program_file)
    program.files[name] = b"hello"
    program.manifest.files[name] = file_info(b"hello")
    with pytest.raises(edgeport.ProgramError, match=f"cannot be saved.*{message}"):
        program.save(tmp_path / "app.edgeport")
    assert not os.path.exists(tmp_path / "app.edgeport")


# -- the golden program: format 1 keeps loading -------------------------------------------


def test_golden_program_still_loads_and_runs():
    """A program written by edgeport 0.1 (format 1) must keep loading. Never regenerate
    this file to make the test pass: add a reader for the old format instead."""
    program = load(GOLDEN)
    first = program(*golden_inputs())
    second = program(*golden_inputs())
    torch.manual_seed(1234)
    eager = Small(start=0.0).eval()
    torch.testing.assert_close(first, eager(*golden_inputs()))
    torch.testing.assert_close(second, eager(*golden_inputs()))
    kinds = {s.kind for s in program.manifest.methods["forward"].steps}
    assert kinds == {"delegate", "portable"}
    assert (program.manifest.version, program.manifest.metadata) == (1, {})


def test_golden_program_saved_again_is_version_2(tmp_path):
    load(GOLDEN).save(tmp_path / "upgraded.edgeport")
    program = load(tmp_path / "upgraded.edgeport")
    assert program.manifest.version == 2
    torch.manual_seed(1234)
    torch.testing.assert_close(program(*golden_inputs()), Small(start=0.0).eval()(*golden_inputs()))


def test_golden_program_with_shared_tensors_still_loads_and_runs():
    """A program of format 2 whose torch programs share a tensor (tests/data, written on
    2026-11-27 by `make_shared_golden`) must keep loading. Never regenerate it to make the
    test pass."""
    program = load(GOLDEN_SHARED)
    assert len(program.manifest.shared_tensors) == 1 and program.manifest.version == 2
    torch.manual_seed(1234)
    eager = Projection().eval()
    for method, x in shared_golden_inputs().items():
        kinds = [s.kind for s in program.manifest.methods[method].steps]
        assert kinds == ["portable", "delegate"]
        torch.testing.assert_close(program.run(*x, method=method).outputs, eager(*x))


def test_a_version_1_file_is_never_sealed():
    manifest, files = unpack(open(GOLDEN, "rb").read())
    with pytest.raises(edgeport.ProgramError, match="a version-1 program has manifest.json.sha256"):
        edgeport.program.read_program(pack(manifest, files))


def test_a_version_2_file_must_be_sealed(program_bytes):
    manifest, files = unpack(program_bytes)
    with pytest.raises(edgeport.ProgramError, match="a version-2 program lacks manifest.json.sha256"):
        edgeport.program.read_program(pack(manifest, files, digest=False))


# -- damage and edits the digest and checksums catch ---------------------------------------


def test_truncated_file(program_file, tmp_path):
    bad = tmp_path / "bad.edgeport"
    bad.write_bytes(program_file.read_bytes()[:-300])
    with pytest.raises(edgeport.ProgramError, match="not a valid .edgeport file|truncated or damaged"):
        load(bad)


def test_wrong_checksum(program_bytes, tmp_path):
    entries = [(n, d[:-1] + bytes([d[-1] ^ 1]) if n.startswith("artifacts/") else d)
               for n, d in read_entries(program_bytes)]
    with pytest.raises(edgeport.ProgramError, match="checksum mismatch for artifacts/"):
        load_bytes(tmp_path, write_entries(entries))


def test_an_edited_manifest_does_not_match_its_digest(program_bytes, tmp_path):
    """Before format 2 the checksums lived in the manifest, so an edited one was trusted."""
    manifest, files = unpack(program_bytes)
    manifest["methods"]["forward"]["steps"][-1]["inputs"].reverse()
    entries = [(MANIFEST, manifest_bytes(manifest)), (DIGEST, read_entries(program_bytes)[1][1]),
               *sorted(files.items())]
    with pytest.raises(edgeport.ProgramError, match="does not match its digest in manifest.json.sha256"):
        load_bytes(tmp_path, write_entries(entries))


# -- zip tricks ------------------------------------------------------------------------------


def _entries_with(program_bytes, change):
    return write_entries([e for e in (change(n, d) for n, d in read_entries(program_bytes)) if e])


def test_path_traversal(program_bytes, tmp_path):
    bad = _entries_with(program_bytes, lambda n, d: ("../evil.bin", d) if n.startswith("state/") else (n, d))
    with pytest.raises(edgeport.ProgramError, match="unsafe path '../evil.bin'"):
        load_bytes(tmp_path, bad)


def test_two_manifests_in_one_zip(program_bytes, tmp_path):
    """zipfile reads the last of two same-named entries; another reader may read the first."""
    manifest, _ = unpack(program_bytes)
    manifest["producer"]["name"] = "someone else"
    text = manifest_bytes(manifest)
    bad = write_entries(read_entries(program_bytes) + [(MANIFEST, text), (DIGEST, digest_line(text))])
    with pytest.raises(edgeport.ProgramError, match="two entries named 'manifest.json'"):
        load_bytes(tmp_path, bad)


def test_a_zip_bomb_is_refused_before_it_is_inflated(program_bytes, tmp_path):
    """100 MB of spaces deflate to under 1 MB; as trailing whitespace they are valid JSON."""
    entries = read_entries(program_bytes)
    bomb = entries[0][1] + b" " * 100_000_000
    bad = write_entries([(stored(MANIFEST, zipfile.ZIP_DEFLATED), bomb), *entries[1:]])
    assert len(bad) < 1_000_000
    start = time.perf_counter()
    with pytest.raises(edgeport.ProgramError, match="manifest.json is compressed"):
        load_bytes(tmp_path, bad)
    assert time.perf_counter() - start < 1.0


def test_compressed_entries_are_refused(program_bytes, tmp_path):
    bad = _entries_with(program_bytes, lambda n, d: (stored(n, zipfile.ZIP_DEFLATED), d) if n.startswith("state/")
                        else (n, d))
    with pytest.raises(edgeport.ProgramError, match="state/steps.bin is compressed"):
        load_bytes(tmp_path, bad)


def test_an_unlisted_file_is_refused(program_bytes, tmp_path):
    bad = write_entries(read_entries(program_bytes) + [("extra/notes.txt", b"hello")])
    with pytest.raises(edgeport.ProgramError, match="extra/notes.txt is in the archive but not listed"):
        load_bytes(tmp_path, bad)


def test_extra_files_under_any_folder_load_when_listed(program_bytes, tmp_path):
    manifest, files = unpack(program_bytes)
    files["tokenizer/tokenizer.json"] = b'{"vocab": {}}'
    program = load_bytes(tmp_path, pack(manifest, files, relist=True))
    assert program.files["tokenizer/tokenizer.json"] == b'{"vocab": {}}'


def test_a_declared_size_that_disagrees_with_the_zip_is_refused_before_reading(program_bytes, tmp_path):
    def change(manifest):
        manifest["files"][first_artifact(manifest)]["size"] = 10**12

    with pytest.raises(edgeport.ProgramError, match=r"artifacts/forward/\d+.zip is \d+ bytes, the manifest says 1000000000000"):
        load_bytes(tmp_path, resealed(program_bytes, change))


def test_entries_claiming_more_bytes_than_the_file_are_refused(program_bytes, tmp_path):
    bad = patch_central_sizes(program_bytes, "state/steps.bin", 2**31)
    with pytest.raises(edgeport.ProgramError, match="claim more bytes than"):
        load_bytes(tmp_path, bad)


def test_two_programs_joined_in_one_file_are_refused(program_bytes, two_outputs_bytes, tmp_path):
    """``cat a.edgeport b.edgeport > c.edgeport`` (a copy appended to another file) loaded
    as b, silently: zipfile reads the last archive of the two."""
    with pytest.raises(edgeport.ProgramError, match=f"the zip read from it starts {len(two_outputs_bytes)} bytes in"):
        load_bytes(tmp_path, two_outputs_bytes + program_bytes)


def test_not_a_zip(tmp_path):
    """A text file said "(unreadable zip) (ValueError: seek out of range)"."""
    with pytest.raises(edgeport.ProgramError, match="not a valid .edgeport file: it is not a zip archive") as info:
        load_bytes(tmp_path, b"hello")
    assert "ValueError" not in str(info.value) and "edgeport export" in info.value.hint


# -- the manifest's schema -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("methods"), "manifest lacks 'methods'"),
        (lambda m: m.update(version=99), "format version 99 is not supported"),
        (lambda m: m.update(version=True), "format version True is not supported"),
        (lambda m: m.update(format="other"), "does not describe an edgeport program"),
        (lambda m: m["methods"]["forward"]["steps"][0].update(kind="shell"),
         r"steps\[0\].kind must be one of 'delegate', 'portable', got 'shell'"),
        (lambda m: m["methods"]["forward"]["steps"][0].update(partition=True), r"partition must be an integer"),
        (lambda m: m["methods"]["forward"]["steps"][0].pop("inputs"), r"steps\[0\] lacks 'inputs'"),
        (lambda m: m["methods"]["forward"]["inputs"][0].update(shape=[2, -4]), r"shape\[1\] must be a dim"),
        (lambda m: m["methods"]["forward"]["inputs"][0].update(dtype="float128"), "dtype must be one of"),
        (lambda m: m["state"]["steps"].update(mode="rw"), r"has unknown field\(s\) 'mode'"),
        (lambda m: m.update(metadata=[1, 2]), "manifest.metadata must be an object, got an array"),
        (lambda m: m.update(metadata={"deep": _nested(40)}), f"nests deeper than {MAX_DEPTH} levels"),
        (lambda m: m["report"]["forward"]["nodes"][0].update(reasons=None), r"reasons must be an object"),
        (lambda m: m["methods"]["forward"].update(out_spec=""), "out_spec must be a non-empty string"),
        (lambda m: m["files"]["state/steps.bin"].update(sha256="XYZ"), "sha256 must be 64 lowercase hex digits"),
        (lambda m: m["files"].update({"artifacts/ghost.bin": {"size": 1, "sha256": "0" * 64}}), "missing file"),
        (lambda m: m["files"].update({"manifest.json": {"size": 1, "sha256": "0" * 64}}),
         "the manifest lists its own entry manifest.json as a file"),
    ],
)
def test_bad_manifest(program_bytes, tmp_path, change, message):
    with pytest.raises(edgeport.ProgramError, match=message):
        load_bytes(tmp_path, resealed(program_bytes, change))


def _state_stored_by_a_newer_edgeport(manifest):
    """What a newer edgeport writes when it adds a way to store state: a new optional
    field standing in for the required ``file`` (as ``fill`` did)."""
    entry = manifest["state"]["steps"]
    entry["zstd_file"] = entry.pop("file")


@pytest.mark.parametrize("change, field", [
    (_state_stored_by_a_newer_edgeport, r"state\['steps'\] has unknown field\(s\) 'zstd_file'"),
    (lambda m: m["methods"]["forward"]["steps"][0].update(precision="fp8"),
     r"steps\[0\] has unknown field\(s\) 'precision'"),
])
def test_a_field_from_a_newer_edgeport_is_named_with_the_hint_to_upgrade(program_bytes, tmp_path, change, field):
    """Edgeports before 'fill' and 'state_prefixes' refused programs using them as
    "malformed: ... lacks 'file'" with the hint to re-export or copy the file again
    (neither helps: the file is whole). The field is named, and the hint says upgrade."""
    with pytest.raises(edgeport.ProgramError, match=f"uses a field this edgeport does not know: .*{field}") as info:
        load_bytes(tmp_path, resealed(program_bytes, change))
    assert "upgrade edgeport" in info.value.hint and "copied whole" not in info.value.hint


def test_an_unknown_field_in_a_version_1_file_is_damage(tmp_path):
    """No newer edgeport writes version 1: an unknown field there is an edit, not a newer field."""
    manifest, files = unpack(open(GOLDEN, "rb").read())
    manifest["state"]["steps"]["mode"] = "rw"
    with pytest.raises(edgeport.ProgramError, match=r"malformed: .*unknown field\(s\) 'mode'") as info:
        load_bytes(tmp_path, pack(manifest, files, digest=False))
    assert "upgrade" not in info.value.hint


@pytest.mark.parametrize(
    "text, message",
    [
        (b'{"version": 2, "version": 1}', "key 'version' appears twice"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than"),
        (b'{"x": NaN}', "NaN is not a number"),
        (b'{"x": 1e999}', "1e999 is out of range"),
        (b'{"x": ' + b"9" * 5000 + b"}", "999999999999999999999999... is out of range"),
        (b'{"x": 9223372036854775808}', "9223372036854775808 is out of range"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        ('{"x": "\\\\", "y": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\""}'.encode(), "manifest lacks 'format'|does not describe"),
    ],
)
def test_unreadable_manifest_json(program_bytes, tmp_path, text, message):
    _, files = unpack(program_bytes)
    with pytest.raises(edgeport.ProgramError, match=message):
        load_bytes(tmp_path, pack(text, files))


# -- the plan ------------------------------------------------------------------------------


def _forward(m):
    return m["methods"]["forward"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: _forward(m)["output_values"].reverse(), r"output_values \['mul', 'sum_1'\] do not name"),
        (lambda m: _forward(m)["outputs"].reverse(), r"output_values \['sum_1', 'mul'\] do not name"),
        (lambda m: _forward(m)["steps"][1]["outputs"].reverse(), r"step 1 \(portable: \['relu'\] -> \['sigmoid', "
                                                                 r"'sum_1'\]\) disagrees with partition 1"),
        (lambda m: _forward(m)["outputs"][0].update(shape=[2, 3]),
         r"value 'sum_1' is float32\[2, 3\] in its output spec but float32\[2\] in the placement report"),
        (lambda m: _forward(m)["steps"].reverse(), "step 0 reads 'sigmoid' before anything produces it"),
        (lambda m: _forward(m)["steps"][1]["outputs"].append("x"), "step 1 writes 'x', which an input already produced"),
        (lambda m: _forward(m).update(out_spec='[1, {"type": null, "context": null, "children_spec": []}]'),
         r"output structure holds 1 values, the method returns 2"),
        (lambda m: _forward(m).update(out_spec='[1, {"type": "torch.return_types.median", "context": "null", '
                                               '"children_spec": []}]'), "output structure cannot be read"),
        (lambda m: _forward(m)["steps"][0].update(artifact="artifacts/forward/nope.zip"), "names artifact"),
        (lambda m: m["artifacts"][first_artifact(m)].update(backend="cpu"),
         "step 0 runs on 'torchops' but its artifact was made by 'cpu'"),
        (lambda m: _forward(m)["steps"][0].update(partition=7), "runs partition 7, which the report does not list"),
        (lambda m: m["report"].pop("forward"), "method 'forward' has no placement report"),
    ],
)
def test_an_edited_plan_is_refused_at_load(two_outputs_bytes, tmp_path, change, message):
    """Swapped outputs used to run and return a different answer."""
    assert unpack(two_outputs_bytes)[0]["methods"]["forward"]["output_values"] == ["sum_1", "mul"]
    with pytest.raises(edgeport.ProgramError, match=message):
        load_bytes(tmp_path, resealed(two_outputs_bytes, change))


@pytest.fixture(scope="module")
def cpu_two_outputs_bytes(tmp_path_factory):
    """TwoOutputs on the cpu: one delegate step, whose artifact records its input and
    output names (['x'], ['sum_1', 'mul'])."""
    path = tmp_path_factory.mktemp("cpu_two") / "two.edgeport"
    edgeport.export(TwoOutputs(), (torch.randn(2, 3),), ["cpu"]).save(path)
    return path.read_bytes()


def _recorded_outputs(names):
    def change(manifest):
        manifest["artifacts"][first_artifact(manifest)]["metadata"]["outputs"] = names
    return change


def test_an_artifact_recording_the_steps_outputs_swapped_is_refused(cpu_two_outputs_bytes, tmp_path):
    with pytest.raises(edgeport.ProgramError, match=r"step 0 outputs \['sum_1', 'mul'\] are not in the order its "
                                                    "artifact records them"):
        edgeport.load(_saved(tmp_path, resealed(cpu_two_outputs_bytes, _recorded_outputs(["mul", "sum_1"]))))


def test_an_artifacts_own_name_equal_to_another_value_is_not_compared(cpu_two_outputs_bytes, tmp_path):
    """A qualcomm partition records its ONNX names; a program whose ONNX output
    "dequantize_per_tensor_3" was not the method's value of that name was refused at
    load (a layer norm's bias made that value in a portable step)."""
    x = torch.randn(2, 3)
    program = edgeport.load(_saved(tmp_path, resealed(cpu_two_outputs_bytes, _recorded_outputs(["out_0", "sum_1"]))))
    expected = TwoOutputs()(x)
    for got, want in zip(program(x), expected):
        torch.testing.assert_close(got, want)


def _saved(tmp_path, data):
    path = tmp_path / "edited.edgeport"
    path.write_bytes(data)
    return path


def test_state_whose_file_has_the_wrong_size_is_refused_at_load(program_bytes, tmp_path):
    def change(manifest):
        manifest["state"]["steps"]["shape"] = [2]
        manifest["report"]["forward"].pop("values")  # which records [1] too

    with pytest.raises(edgeport.ProgramError, match=r"needs 8 bytes, its file has 4"):
        load_bytes(tmp_path, resealed(program_bytes, change))


def test_a_state_of_zeros_is_stored_as_a_fill_not_a_file(tmp_path):
    """A KV cache starts as zeros: its description is enough (`arrays.initial_state`)."""
    torch.manual_seed(1234)
    program = edgeport.export(Small(start=0.0).eval(), golden_inputs(), ["torchops"],
                              registry=registry_with(TorchOpsBackend()))
    assert program.manifest.state["steps"] == {"dtype": "float32", "shape": [1], "fill": 0}
    assert not [name for name in program.files if name.startswith("state/")]
    program.save(tmp_path / "zeros.edgeport")
    loaded = load(tmp_path / "zeros.edgeport")
    torch.manual_seed(1234)
    eager = Small(start=0.0).eval()
    for _ in range(2):  # the state starts at 0 and moves on
        torch.testing.assert_close(loaded(*golden_inputs()), eager(*golden_inputs()))


@pytest.mark.parametrize("change, message", [
    (lambda entry: entry.update(fill=0), "program state 'steps' has both a file and a fill value"),
    (lambda entry: entry.pop("file"), "program state 'steps' has neither a file nor a fill value"),
    (lambda entry: entry.update(fill=1), r"state\['steps'\].fill must be an integer in \[0, 0\], got 1"),
])
def test_a_state_has_a_file_or_a_fill_of_zero(program_bytes, tmp_path, change, message):
    with pytest.raises(edgeport.ProgramError, match=message):
        load_bytes(tmp_path, resealed(program_bytes, lambda m: change(m["state"]["steps"])))


def test_state_written_but_not_read_is_refused(program_bytes, tmp_path):
    with pytest.raises(edgeport.ProgramError, match="reads and writes different program state"):
        load_bytes(tmp_path, resealed(program_bytes, lambda m: _forward(m).update(state_reads={})))


# -- damage found only when a torch program is read: ProgramError from Python and the CLI ----


@pytest.fixture
def damaged_graph(program_bytes, tmp_path, monkeypatch):
    monkeypatch.setattr(edgeport.plugins, "_default", registry_with(TorchOpsBackend()))
    manifest, files = unpack(program_bytes)
    for name in files:
        if name.endswith("graph.json"):
            files[name] = b"{}"
    path = tmp_path / "bad.edgeport"
    path.write_bytes(pack(manifest, files, relist=True))
    return path


def test_damaged_portable_graph_is_one_program_error(damaged_graph):
    program = load(damaged_graph)
    with pytest.raises(edgeport.ProgramError, match="cannot be read"):
        program(*golden_inputs())


def test_damaged_portable_graph_in_edgeport_run(damaged_graph):
    result = CliRunner().invoke(cli, ["run", str(damaged_graph)], env={"EDGEPORT_RAISE_ERRORS": "1"})
    assert isinstance(result.exception, edgeport.ProgramError), result.output
    result = CliRunner().invoke(cli, ["run", str(damaged_graph)])
    assert result.exit_code == 1 and "cannot be read" in result.output and "internal error" not in result.output


def test_a_graph_naming_an_op_torch_lacks_is_one_line(program_bytes, tmp_path, monkeypatch):
    """torch's own message holds the node, its metadata and a traceback: 8 lines."""
    monkeypatch.setattr(edgeport.plugins, "_default", registry_with(TorchOpsBackend()))
    manifest, files = unpack(program_bytes)
    graph = "portable/forward/0/graph.json"
    assert b"torch.ops.aten.addmm.default" in files[graph]
    files[graph] = files[graph].replace(b"torch.ops.aten.addmm.default", b"torch.ops.aten.no_such_op.default")
    path = tmp_path / "bad.edgeport"
    path.write_bytes(pack(manifest, files, relist=True))
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: the torch program portable/forward/0 cannot be read: ValueError: We failed to resolve "
        "torch.ops.aten.no_such_op.default to an operator"]


@pytest.mark.parametrize("change", [
    lambda entry: entry.update(dtype="int32"),
    lambda entry: entry.update(shape=[16]),
    lambda entry: entry.update(shape=[2, 8]),
], ids=["dtype", "flattened", "reshaped"])
def test_a_weight_stored_unlike_the_graph_reads_it_is_one_program_error(program_bytes, tmp_path, monkeypatch, change):
    """Its bytes still fit, so only a comparison with the graph finds it; torch's own
    error at the first call used to be it."""
    monkeypatch.setattr(edgeport.plugins, "_default", registry_with(TorchOpsBackend()))
    manifest, files = unpack(program_bytes)
    index_name = "portable/forward/0/tensors.json"  # the linear's step: its weight is a folded [4, 4] constant
    index = json.loads(files[index_name])
    (weight,) = [entry for entry in index["constants"].values() if entry["shape"] == [4, 4]]
    change(weight)
    files[index_name] = json.dumps(index).encode()
    path = tmp_path / "bad.edgeport"
    path.write_bytes(pack(manifest, files, relist=True))
    with pytest.raises(edgeport.ProgramError, match=r"cannot be read: ValueError: tensor \w+ is stored as"):
        load(path)(*golden_inputs())


@pytest.mark.parametrize("options, message", [
    ({"scale": 1.0, "speed": 2}, "records options backend 'torchops' does not accept: .*has no option speed"),
    ({"scale": "fast"}, "records options backend 'torchops' does not accept: .*expects float, got 'fast'"),
    ({"scale": True}, "records options backend 'torchops' does not accept: .*expects float, got True"),
])
def test_options_the_backend_refuses_are_a_program_error(program_bytes, tmp_path, options, message):
    """Only a backend knows its options, so this surfaces when the runtime is created."""
    def change(manifest):
        manifest["artifacts"][first_artifact(manifest)]["options"] = options

    program = load_bytes(tmp_path, resealed(program_bytes, change))
    with pytest.raises(edgeport.ProgramError, match=f"artifact artifacts/forward/\\d+.zip {message}"):
        program(*golden_inputs())


# -- explain ---------------------------------------------------------------------------------


def test_explain_of_an_unknown_method_is_a_user_error(program_file):
    with pytest.raises(edgeport.InputError, match="program has no method 'nosuch'; it has forward"):
        load(program_file).report("nosuch")
    with pytest.raises(edgeport.InputError, match="program has no method 'nosuch'; it has forward"):
        load(program_file).plan("nosuch")  # check_quantization(method="nosuch") raised KeyError
    assert load(program_file).plan().name == "forward"


# -- reading in place (memory map) ---------------------------------------------------------


def test_a_loaded_programs_files_are_read_only_views_of_the_mapped_file(program_file):
    """No copy of the file, nor of any entry: each file is a slice of one memory map."""
    import mmap

    program = load(program_file)
    for name, data in program.files.items():
        assert isinstance(data, memoryview) and data.readonly, name
        assert isinstance(data.obj, mmap.mmap), name
    _, files = unpack(program_file.read_bytes())
    assert {n: bytes(d) for n, d in program.files.items()} == files


def test_saving_over_a_loaded_program_keeps_it_running(program_file):
    """save writes a new file and renames it over the old: the loaded map stays valid."""
    program = load(program_file)
    before = program(*golden_inputs())
    program.save(program_file)
    assert torch.equal(program(*golden_inputs()), before + 1)  # one more step of its state
    assert torch.equal(load(program_file)(*golden_inputs()), before)


def test_an_entry_whose_local_header_disagrees_with_the_directory_is_refused(program_bytes, tmp_path):
    """The loader finds each entry's bytes through its local header (zipfile is not asked
    to read them), so a local header naming another file is damage, not a different file."""
    name = next(n for n, _ in read_entries(program_bytes) if n.startswith("state/"))
    at = program_bytes.find(b"PK\x03\x04")
    while program_bytes[at + 30:at + 30 + len(name)] != name.encode():  # its local header
        at = program_bytes.find(b"PK\x03\x04", at + 4)
    bad = bytearray(program_bytes)
    bad[at + 30] ^= 0x20  # "state/..." -> "State/...": same length, another name
    with pytest.raises(edgeport.ProgramError, match=f"{name} is damaged .*local header"):
        load_bytes(tmp_path, bytes(bad))


def test_an_empty_file_is_a_program_error(tmp_path):
    (tmp_path / "empty.edgeport").write_bytes(b"")
    with pytest.raises(edgeport.ProgramError, match="not a valid .edgeport file"):
        load(tmp_path / "empty.edgeport")


def test_as_bytes_copies_a_view_and_keeps_bytes(program_file):
    program = load(program_file)
    view = next(iter(program.files.values()))
    copied = edgeport.as_bytes(view)
    assert type(copied) is bytes and copied == view
    assert edgeport.as_bytes(copied) is copied


def test_a_gguf_model_loaded_as_a_program_says_to_export_it_first(tmp_path):
    """It was "not a valid .edgeport file (unreadable zip)", hinting at a damaged copy."""
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    with pytest.raises(edgeport.ProgramError, match="model.gguf is a GGUF model file, not a .edgeport program") as err:
        edgeport.load(path)
    assert err.value.hint == f"export it first: edgeport llm export {path} -o model.edgeport"
