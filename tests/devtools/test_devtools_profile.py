"""`edgeport run --profile`: per-step times that add up to the wall time, per backend,
the portable share and the bytes crossing delegate boundaries."""

import json
import re

import pytest
import torch
from click.testing import CliRunner

import edgeport
from edgeport.cli import cli
from edgeport.devtools.profile import summarize_profile, time_runs
from torch_backend import TorchOpsBackend, registry_with


class Convs(torch.nn.Module):
    """Convolutions (delegated) around a sigmoid the test backend has no kernel for
    (portable): steps that take milliseconds, so the runtime's own overhead is small."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.b = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c = torch.nn.Conv2d(32, 16, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.sigmoid(self.b(x))
        return torch.relu(self.c(x))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    registry = registry_with(TorchOpsBackend(ops=("convolution", "relu")))
    program = edgeport.export(Convs().eval(), (torch.randn(1, 16, 64, 64),), ["torchops"], registry=registry)
    path = tmp_path_factory.mktemp("profile") / "convs.edgeport"
    program.save(path)
    return edgeport.load(path, registry=registry), registry


def test_steps_add_up_to_the_wall_time(program):
    prog, _ = program
    plan = prog.manifest.methods["forward"]
    results, walls = time_runs(prog.runtime(), "forward", (torch.randn(1, 16, 64, 64),), repeat=15, warmup=2,
                               profile=True)
    profile = summarize_profile(plan, results, walls, prog.report()["values"])
    assert [s.label for s in profile.steps] == ["torchops", "portable", "torchops"]
    assert profile.steps_ms == pytest.approx(profile.wall_ms, rel=0.10)
    sums = sorted(sum(s.ms for s in r.steps) for r in results)  # and over all runs, medians against medians
    assert sums[len(sums) // 2] == pytest.approx(sorted(walls)[len(walls) // 2], rel=0.10)
    assert sum(b.ms for b in profile.backends) == pytest.approx(profile.steps_ms)
    assert {b.backend: b.steps for b in profile.backends} == {"torchops": 2, "portable": 1}
    portable = next(s for s in profile.steps if s.kind == "portable")
    assert profile.portable_share == pytest.approx(portable.ms / profile.wall_ms)
    activation = 1 * 32 * 64 * 64 * 4  # float32 bytes of one 32-channel map
    first, _, last = profile.steps
    assert (first.bytes_in, first.bytes_out) == (1 * 16 * 64 * 64 * 4, activation)
    assert (last.bytes_in, last.bytes_out) == (activation, 1 * 16 * 64 * 64 * 4)
    assert profile.boundary_bytes == first.bytes_in + first.bytes_out + last.bytes_in + last.bytes_out


def test_cli_profile_table_and_json(program, tmp_path):
    prog, registry = program
    path = tmp_path / "convs.edgeport"
    prog.save(path)
    result = CliRunner().invoke(cli, ["run", str(path), "--profile", "--repeat", "3", "--json"], obj=registry,
                                catch_exceptions=False)
    data = json.loads(result.output)
    assert [s["label"] for s in data["steps"]] == ["torchops", "portable", "torchops"]
    assert {"ms", "share", "partition", "bytes_in", "bytes_out"} <= set(data["steps"][0])
    profile = data["profile"]
    assert profile["runs"] == 3 and 0 < profile["portable_share"] < 1
    assert profile["wall_ms"] == pytest.approx(data["latency_ms"]["median"])
    assert {b["backend"] for b in profile["backends"]} == {"torchops", "portable"}

    table = CliRunner().invoke(cli, ["run", str(path), "--profile", "--repeat", "2"], obj=registry,
                               catch_exceptions=False).output
    assert "total (wall)" in table and "runtime overhead" in table
    assert "torch (portable steps and torch references):" in table
    assert "the faster of the two middle runs of 2" in table  # the upper one was the slowest of 2
    assert "512.0 KiB" in table  # bytes into the last delegate step (1x32x64x64 float32)


def test_a_reference_run_is_profiled_as_torch_crossing_no_boundary(tmp_path):
    """It said "portable (torch) code: 0.0%" with 512 KiB crossing, and the backend row
    had no "torch reference" label, though the whole call ran torch."""
    path = tmp_path / "convs.edgeport"
    edgeport.export(Convs().eval(), (torch.randn(1, 16, 64, 64),), ["torchops"], keep_reference=True,
                    registry=registry_with(TorchOpsBackend(ops=("convolution", "relu")))).save(path)
    registry = registry_with(TorchOpsBackend(ops=("convolution", "relu"), can_run=False))
    reference = edgeport.load(path, registry=registry, reference=True)
    results, walls = time_runs(reference.runtime(), "forward", (torch.randn(1, 16, 64, 64),), repeat=2, profile=True)
    profile = summarize_profile(reference.manifest.methods["forward"], results, walls, reference.report()["values"])
    assert profile.portable_share == pytest.approx(profile.steps_ms / profile.wall_ms)
    assert profile.boundary_bytes == 0
    assert {b.backend: b.label for b in profile.backends} == {"torchops": "torchops: torch reference",
                                                              "portable": "portable"}
    assert profile.wall_ms == min(walls)  # of two runs, the faster: never the slowest
    table = CliRunner().invoke(cli, ["run", str(path), "--reference", "--profile"], obj=registry,
                               catch_exceptions=False).output
    share = re.search(r"torch \(portable steps and torch references\): ([\d.]+)%", table)
    assert share and float(share.group(1)) > 50  # all but the runtime overhead (the first call loads lazily)
    assert "0 B cross delegate boundaries" in table
    assert "not on the target hardware: torchops: torch reference: these times say nothing about the device" in table
