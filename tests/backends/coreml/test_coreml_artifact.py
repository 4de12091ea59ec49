"""compile(): the artifact's bytes and layout, refusals, and quiet conversion."""

import gc
import io
import json
import logging
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("coremltools", reason="the coreml backend needs coremltools (pip install 'edgeport[coreml]')")

import edgeport  # noqa: E402
from coreml_helpers import Lambda, export  # noqa: E402
from edgeport.backends.coreml import CoreMLOptions, package  # noqa: E402

aten = torch.ops.aten
image = torch.randn(1, 3, 8, 8)

HERE = Path(__file__).resolve().parent  # a subprocess imports coreml_helpers and tests/example_models


@pytest.fixture(scope="module")
def conv_program():
    return export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (image,))


@pytest.fixture(scope="module")
def conv_artifact(backend, conv_program):
    return backend.compile(conv_program, CoreMLOptions())


def test_same_program_gives_the_same_bytes(backend, conv_program, conv_artifact):
    again = backend.compile(conv_program, CoreMLOptions())
    assert again.data == conv_artifact.data
    assert again.metadata == conv_artifact.metadata
    assert conv_artifact.suffix == ".mlpackage.zip"


@pytest.mark.slow
def test_same_program_gives_the_same_bytes_in_another_process():
    """Protobuf maps and manifest identifiers must not depend on the process's hash seed."""
    script = (
        "import hashlib, torch\n"
        "from coreml_helpers import Lambda, export\n"
        "from edgeport.backends.coreml import CoreMLBackend, CoreMLOptions\n"
        "torch.manual_seed(0)\n"
        "program = export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LayerNorm(6)), (torch.randn(1, 3, 8, 8),))\n"
        "print(hashlib.sha256(CoreMLBackend().compile(program, CoreMLOptions()).data).hexdigest())\n"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(map(str, (HERE, HERE.parents[1])))}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout)
    assert len(digests) == 1


def test_artifact_is_a_stored_zip_of_one_mlpackage(conv_artifact):
    with zipfile.ZipFile(io.BytesIO(conv_artifact.data)) as archive:
        entries = archive.infolist()
    names = [e.filename for e in entries]
    assert names == sorted(names) and all(n.startswith("model.mlpackage/") for n in names)
    assert {"model.mlpackage/Manifest.json", "model.mlpackage/Data/com.apple.CoreML/model.mlmodel"} <= set(names)
    assert {e.compress_type for e in entries} == {zipfile.ZIP_STORED}
    assert {e.date_time for e in entries} == {(1980, 1, 1, 0, 0, 0)}


def test_manifest_identifiers_derive_from_item_paths(conv_artifact):
    with zipfile.ZipFile(io.BytesIO(conv_artifact.data)) as archive:
        manifest = json.loads(archive.read("model.mlpackage/Manifest.json"))
    items = manifest["itemInfoEntries"]
    assert {i["path"] for i in items.values()} == {"com.apple.CoreML/model.mlmodel", "com.apple.CoreML/weights"}
    for identifier, item in items.items():
        assert uuid.UUID(identifier).version == 5
    assert items[manifest["rootModelIdentifier"]]["name"] == "model.mlmodel"


def test_spec_loads_back_without_a_conversion_date(conv_artifact):
    with package.opened(conv_artifact.data) as path:
        spec = package.load_spec(path)
    metadata = dict(spec.description.metadata.userDefined)
    assert metadata["com.github.apple.coremltools.version"] == "9.0"
    assert "com.github.apple.coremltools.conversion_date" not in metadata


def test_an_empty_weights_directory_survives_the_zip(backend):
    artifact = backend.compile(export(nn.ReLU(), (image,)), CoreMLOptions())  # no weights at all
    with package.opened(artifact.data) as path:
        assert (path / "Data/com.apple.CoreML/weights").is_dir()
        package.validate(path)


def test_integer_and_boolean_values_travel_as_int32_and_float32(backend):
    program = export(Lambda(lambda ids, keep: (ids * 2, keep & (ids > 3))), (torch.randint(0, 9, (2, 3)), torch.rand(2, 3) > 0.5))
    meta = backend.compile(program, CoreMLOptions()).metadata
    assert [(i["dtype"], i["coreml_dtype"]) for i in meta["inputs"]] == [("int64", "INT32"), ("bool", "FLOAT32")]
    assert [(o["dtype"], o["coreml_dtype"]) for o in meta["outputs"]] == [("int64", "INT32"), ("bool", "FLOAT32")]


def test_extract_refuses_paths_outside_the_package(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.mlpackage/../../evil.txt", b"x")
    with pytest.raises(edgeport.BackendError, match="unexpected path"):
        package.extract(buffer.getvalue(), tmp_path)
    with pytest.raises(edgeport.BackendError, match="not a zip archive"):
        package.extract(b"not a zip", tmp_path)


def test_a_node_coremltools_fails_on_is_declined_by_name(backend):
    """relu of an integer tensor has a converter, which raises: that node alone is refused."""
    program = export(Lambda(lambda ids: torch.relu(ids - 4) * 2), (torch.randint(0, 9, (2, 3)),))
    ctx = edgeport.SupportContext(program, CoreMLOptions())
    assert all(backend.support(n, ctx) for n in program.graph.nodes)
    with pytest.raises(edgeport.DeclineNodes) as declined:
        backend.compile(program, CoreMLOptions())
    (node, reason), = declined.value.reasons.items()
    assert node == "relu"
    assert reason.startswith("coremltools could not convert aten.relu.default: ValueError:")


def test_an_op_without_converter_is_declined_by_name_at_compile(backend):
    """compile() given a node support() would decline still names it."""
    program = export(Lambda(lambda a: a.prod(-1) + 1), (torch.randn(2, 3),))
    with pytest.raises(edgeport.DeclineNodes) as declined:
        backend.compile(program, CoreMLOptions())
    assert list(declined.value.reasons) == ["prod"]


def test_an_output_that_passes_an_input_through_is_refused(backend):
    program = export(Lambda(lambda a: (a, a + 1)), (torch.randn(2, 3),))
    with pytest.raises(edgeport.BackendError, match="pass an input straight through"):
        backend.compile(program, CoreMLOptions())


def test_alias_converts_and_the_given_program_is_left_alone(backend):
    program = export(Lambda(lambda a: aten.alias.default(a) * 2), (torch.randn(2, 3),))
    before = [n.target for n in program.graph.nodes]
    artifact = backend.compile(program, CoreMLOptions())
    assert [n.target for n in program.graph.nodes] == before
    assert artifact.metadata["mil_ops"]["mul"] == 1


def test_conversion_is_silent_and_logged_at_debug(backend, conv_program, capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger="edgeport.backends.coreml"):
        backend.compile(conv_program, CoreMLOptions())
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    messages = [r.getMessage() for r in caplog.records if r.name == "edgeport.backends.coreml"]
    assert any("Converting PyTorch Frontend ==> MIL Ops" in m for m in messages)  # its progress bar
    assert any(m.startswith("coremltools converted 2 nodes into") for m in messages)
    assert logging.getLogger("coremltools").handlers == []  # our forwarding handler is gone


def test_conversion_leaves_the_garbage_collector_as_it_was(backend, conv_program):
    backend.compile(conv_program, CoreMLOptions())
    assert gc.get_freeze_count() == 0
