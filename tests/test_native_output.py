"""The toolchains' chatter stays out of edgeport's output unless asked for.

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." and QNN's HTP
library a "# LIBNATIVE: ..." banner, from native code, on every run; `edgeport run`
must print neither unless ``--debug`` (or ``EDGEPORT_TOOLCHAIN_LOG=1``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import edgeport
from edgeport.native_output import TOOLCHAIN_LOG_ENV
from edgeport.testing import registry_for

CHATTER = re.compile(r"^CHATTER")


def test_native_writes_are_filtered_and_kept_off_stdout(capfd, monkeypatch):
    monkeypatch.delenv(TOOLCHAIN_LOG_ENV, raising=False)
    with edgeport.filter_native_output(drop=[CHATTER]):
        os.write(1, b"CHATTER on stdout\nkept from stdout\n")
        os.write(2, b"CHATTER on stderr\nkept from stderr\n")
    out, err = capfd.readouterr()
    assert out == ""
    assert err == "kept from stdout\nkept from stderr\n"


def test_captured_lines_reach_the_caller_even_when_the_block_raises(capfd, monkeypatch):
    """A backend puts a toolchain's own error line (printed, never raised) in its error."""
    monkeypatch.delenv(TOOLCHAIN_LOG_ENV, raising=False)
    captured: list[str] = []
    with pytest.raises(RuntimeError):
        with edgeport.filter_native_output(drop=[CHATTER], captured=captured):
            os.write(1, b"CHATTER the reason\nkept\n")
            raise RuntimeError("failed")
    assert captured == ["CHATTER the reason", "kept"]
    assert capfd.readouterr() == ("", "kept\n")


def test_the_toolchain_log_setting_keeps_everything(capfd, monkeypatch):
    monkeypatch.setenv(TOOLCHAIN_LOG_ENV, "1")
    with edgeport.filter_native_output(drop=[CHATTER]):
        os.write(2, b"CHATTER on stderr\n")
    assert capfd.readouterr().err == "CHATTER on stderr\n"


def test_output_written_before_and_after_goes_where_it_was_meant_to(capfd, monkeypatch):
    monkeypatch.delenv(TOOLCHAIN_LOG_ENV, raising=False)
    print("before", flush=True)
    with edgeport.filter_native_output(drop=[CHATTER]):
        pass
    print("after", flush=True)
    assert capfd.readouterr() == ("before\nafter\n", "")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def backend_named(name: str) -> edgeport.Backend:
    if name == "cpu":
        from edgeport.backends.cpu import CpuBackend

        return CpuBackend()
    pytest.importorskip("onnxruntime_qnn")
    from edgeport.backends.qualcomm import QualcommBackend

    return QualcommBackend()


# What each toolchain prints on every run when nothing filters it.
CHATTER_OF = {"cpu": "Created TensorFlow Lite XNNPACK delegate for CPU", "qualcomm": "# LIBNATIVE:"}


@pytest.fixture(scope="module", params=["cpu", "qualcomm"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    name = request.param
    backend = backend_named(name)
    if not backend.availability().can_run:
        pytest.skip(f"{name} cannot run here: {backend.availability().why}")
    program = edgeport.export(Tiny().eval(), (torch.randn(1, 8),), [name], registry=registry_for(backend))
    path = tmp_path_factory.mktemp("chatter") / f"tiny_{name}.edgeport"
    program.save(path)
    return name, str(path)


def edgeport_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != TOOLCHAIN_LOG_ENV}
    return subprocess.run([sys.executable, "-m", "edgeport.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_edgeport_run_prints_no_toolchain_chatter(saved):
    name, path = saved
    quiet = edgeport_cli("run", path, "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout.lstrip().startswith("{")
    debug = edgeport_cli("--debug", "run", path, "--json")
    assert debug.returncode == 0, debug.stderr
    assert CHATTER_OF[name] in debug.stderr  # there, and let through when asked for
    assert debug.stdout.lstrip().startswith("{")
