"""Torch programs of one program store a tensor they share once (core/shared_tensors.py):
the kept references of two methods on one weight hold it in one file."""

from __future__ import annotations

import json

import pytest
import torch

import edgeport
from edgeport.backends.cpu import CpuBackend
from edgeport.portable import stored_program
from edgeport.testing import registry_for
from edgeport.testing.quantized_cases import reference_program
from program_zip import pack, unpack
from test_shared_artifacts import Shared

WEIGHT_BYTES = 256 * 512 * 4  # Shared's


@pytest.fixture(scope="module")
def two_methods():
    module, registry = Shared(), registry_for(CpuBackend())
    inputs = {"one": torch.randn(1, 256), "many": torch.randn(16, 256)}
    program = edgeport.export_methods({m: (module, (x,)) for m, x in inputs.items()}, ["cpu"],
                                      keep_reference=True, registry=registry)
    return module, inputs, program, registry


def test_the_references_of_two_methods_store_their_weight_once(two_methods, tmp_path):
    module, inputs, program, registry = two_methods
    (shared,) = program.manifest.shared_tensors  # the weight; the 2 KiB bias stays in each program
    assert len(program.files[shared]) == WEIGHT_BYTES
    references = {name: len(data) for name, data in program.files.items() if name.startswith("reference/")}
    assert sum(references.values()) < WEIGHT_BYTES / 10
    for method in inputs:
        index = json.loads(bytes(program.files[f"{program.manifest.methods[method].steps[0].reference}/tensors.json"]))
        assert [e.get("shared") for e in index["state_dict"].values() if e["shape"] == [512, 256]] == [shared]
    program.save(tmp_path / "p.edgeport")
    loaded = edgeport.load(tmp_path / "p.edgeport", registry=registry)
    assert loaded.manifest.shared_tensors == (shared,)
    references_only = reference_program(loaded)
    with torch.no_grad():
        for method, x in inputs.items():
            assert torch.allclose(references_only.run(x, method=method).outputs, module(x), atol=1e-5)


def test_torch_programs_read_together_share_the_tensor_in_memory_too(two_methods):
    *_, program, _ = two_methods
    loaded = {}
    weights = []
    for plan in program.manifest.methods.values():
        reference = stored_program(program.files, plan.steps[0].reference, loaded)
        (weight,) = [t for t in reference.state_dict.values() if t.shape == (512, 256)]
        weights.append(weight)
    assert weights[0].data_ptr() == weights[1].data_ptr() and len(loaded) == 1


def test_a_program_sharing_nothing_writes_no_shared_tensors_field(tmp_path):
    """An edgeport from before shared tensors refuses the field: it is written only where used."""
    module, x = Shared(), torch.randn(1, 256)
    program = edgeport.export(module, (x,), ["cpu"], keep_reference=True, registry=registry_for(CpuBackend()))
    program.save(tmp_path / "p.edgeport")
    manifest, files = unpack((tmp_path / "p.edgeport").read_bytes())
    assert "shared_tensors" not in manifest and not [n for n in files if n.startswith("tensors/")]


@pytest.mark.parametrize("listed, why", [
    ("artifacts/cpu.tflite", "not in the folder tensors/"),
    ("tensors/0000.bin", "not a file of the program"),
])
def test_a_shared_tensor_listing_that_names_no_shared_file_is_refused_at_load(two_methods, tmp_path, listed, why):
    *_, program, registry = two_methods
    program.save(tmp_path / "p.edgeport")
    manifest, files = unpack((tmp_path / "p.edgeport").read_bytes())
    manifest["shared_tensors"] = [listed]
    (tmp_path / "edited.edgeport").write_bytes(pack(manifest, files))
    with pytest.raises(edgeport.ProgramError, match=why):
        edgeport.load(tmp_path / "edited.edgeport", registry=registry)


def test_a_tensor_index_pointing_outside_the_shared_folder_is_one_program_error(two_methods, tmp_path):
    """A consistently rewritten index cannot make a tensor of an artifact's bytes."""
    _, inputs, program, registry = two_methods
    program.save(tmp_path / "p.edgeport")
    manifest, files = unpack((tmp_path / "p.edgeport").read_bytes())
    index_path = f"{manifest['methods']['one']['steps'][0]['reference']}/tensors.json"
    index = json.loads(files[index_path])
    for entry in index["state_dict"].values():
        if "shared" in entry:
            entry["shared"] = "artifacts/cpu.tflite"
    files[index_path] = json.dumps(index).encode()
    (tmp_path / "edited.edgeport").write_bytes(pack(manifest, files, relist=True))
    loaded = reference_program(edgeport.load(tmp_path / "edited.edgeport", registry=registry))
    with pytest.raises(edgeport.ProgramError, match="not a shared tensor's file"):
        loaded.run(inputs["one"], method="one")
