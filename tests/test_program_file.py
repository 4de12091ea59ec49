"""The .edgeport file: round trip, verification of damaged files, and the golden program."""

import json
import os
import zipfile

import pytest
import torch

import edgeport
from torch_backend import TorchOpsBackend, registry_with

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_v1.edgeport")


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.register_buffer("steps", torch.zeros(1))

    def forward(self, x):
        self.steps.add_(1)
        return torch.relu(self.linear(x)).sigmoid() + self.steps


def golden_inputs():
    return (torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8,)


def make_golden(path):
    torch.manual_seed(1234)
    program = edgeport.export(Small().eval(), golden_inputs(), ["torchops"], registry=registry_with(TorchOpsBackend()))
    program.save(path)


@pytest.fixture
def program_file(tmp_path):
    path = tmp_path / "small.edgeport"
    make_golden(path)
    return path


def rewrite(src, dst, change):
    """Copy a program zip, letting ``change(name, data)`` alter or drop entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            result = change(name, zin.read(name))
            if result is not None:
                zout.writestr(*result) if isinstance(result, tuple) else zout.writestr(name, result)


def load(path):
    return edgeport.load(path, registry=registry_with(TorchOpsBackend()))


def test_saved_program_is_stored_uncompressed_and_never_pickled(program_file):
    with zipfile.ZipFile(program_file) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        for name in z.namelist():
            assert not z.read(name).startswith(b"\x80"), f"{name} looks like a pickle"
        manifest = json.loads(z.read("manifest.json"))
    assert (manifest["format"], manifest["version"]) == ("edgeport", 1)
    assert all(len(a["sha256"]) == 64 for a in manifest["files"].values())


def test_saving_twice_gives_the_same_bytes(program_file, tmp_path):
    load(program_file).save(tmp_path / "again.edgeport")
    assert (tmp_path / "again.edgeport").read_bytes() == program_file.read_bytes()


def test_truncated_file(program_file, tmp_path):
    bad = tmp_path / "bad.edgeport"
    bad.write_bytes(program_file.read_bytes()[:-300])
    with pytest.raises(edgeport.ProgramError, match="not a valid .edgeport file|truncated or damaged"):
        load(bad)


def test_wrong_checksum(program_file, tmp_path):
    bad = tmp_path / "bad.edgeport"
    rewrite(program_file, bad, lambda n, d: d if not n.startswith("artifacts/") else d[:-1] + bytes([d[-1] ^ 1]))
    with pytest.raises(edgeport.ProgramError, match="checksum mismatch for artifacts/"):
        load(bad)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("methods"), "manifest.json is malformed"),
        (lambda m: m.update(version=99), "format version 99 is not supported"),
        (lambda m: m.update(format="other"), "does not describe an edgeport program"),
        (lambda m: m["methods"]["forward"]["steps"][0].update(kind="shell"), "unknown step kind"),
        (lambda m: m["files"].update({"artifacts/ghost.bin": {"size": 1, "sha256": "0" * 64}}), "missing file"),
    ],
)
def test_bad_manifest(program_file, tmp_path, change, message):
    def edit(name, data):
        if name != "manifest.json":
            return data
        manifest = json.loads(data)
        change(manifest)
        return json.dumps(manifest)

    bad = tmp_path / "bad.edgeport"
    rewrite(program_file, bad, edit)
    with pytest.raises(edgeport.ProgramError, match=message):
        load(bad)


def test_path_traversal(program_file, tmp_path):
    bad = tmp_path / "bad.edgeport"
    rewrite(program_file, bad, lambda n, d: ("../evil.bin", d) if n.startswith("state/") else d)
    with pytest.raises(edgeport.ProgramError, match="unsafe path '../evil.bin'"):
        load(bad)


def test_not_a_zip(tmp_path):
    bad = tmp_path / "bad.edgeport"
    bad.write_text("hello")
    with pytest.raises(edgeport.ProgramError, match="not a valid .edgeport file"):
        load(bad)


def test_damaged_portable_graph_is_one_program_error(program_file, tmp_path):
    bad = tmp_path / "bad.edgeport"

    def edit(name, data):
        if name.endswith("graph.json"):
            data = b"{}"
        if name == "manifest.json":
            manifest = json.loads(data)
            for path, info in manifest["files"].items():
                if path.endswith("graph.json"):
                    info.update(size=2, sha256="44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
            data = json.dumps(manifest)
        return data

    rewrite(program_file, bad, edit)
    with pytest.raises(edgeport.ProgramError, match="cannot be read"):
        load(bad)(*golden_inputs())


def test_golden_program_still_loads_and_runs():
    """A program written by edgeport 0.1 (format 1) must keep loading. Never regenerate
    this file to make the test pass: add a reader for the old format instead."""
    program = load(GOLDEN)
    first = program(*golden_inputs())
    second = program(*golden_inputs())
    torch.manual_seed(1234)
    eager = Small().eval()
    torch.testing.assert_close(first, eager(*golden_inputs()))
    torch.testing.assert_close(second, eager(*golden_inputs()))
    kinds = {s.kind for s in program.manifest.methods["forward"].steps}
    assert kinds == {"delegate", "portable"}


if __name__ == "__main__":  # writes the golden file: python tests/test_program_file.py
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    make_golden(GOLDEN)
