"""`edgeport hub` end to end: the real CLI and qai-hub client, against AiHubTestDouble on
loopback (configured the way qai-hub documents: a client.ini file)."""

import subprocess
import sys

import pytest
import torch

import edgeport
from edgeport.testing import registry_for

pytest.importorskip("qai_hub")
from qualcomm_hub_double import AiHubTestDouble  # noqa: E402


def edgeport_cli(*args, ini):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ini.parent), "QAIHUB_CLIENT_INI": str(ini)}
    return subprocess.run([sys.executable, "-m", "edgeport.cli", *args], capture_output=True, text=True, env=env)


def write_ini(path, url, token="test-token"):
    path.write_text(f"[api]\napi_token = {token}\napi_url = {url}\nweb_url = {url}\nverbose = False\n")
    return path


def test_devices_and_profile_through_the_cli(tmp_path, backend):
    torch.manual_seed(0)
    model, x = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), torch.randn(1, 8)
    program = edgeport.export(model, (x,), ["qualcomm"], options={"qualcomm": {"soc": "SM8650"}},
                              registry=registry_for(backend))
    program.save(tmp_path / "m.edgeport")
    with AiHubTestDouble(token="test-token", latency_us=2500) as double:
        ini = write_ini(tmp_path / "client.ini", double.url)
        devices = edgeport_cli("hub", "devices", ini=ini)
        assert devices.returncode == 0, devices.stderr
        assert "Samsung Galaxy S24 (Family)" in devices.stdout and "Hexagon v75" in devices.stdout
        galaxies = edgeport_cli("hub", "devices", "--name", "galaxy s2", ini=ini)
        assert [line.split("\t")[0] for line in galaxies.stdout.splitlines()] == \
            ["Samsung Galaxy S24 (Family)", "Samsung Galaxy S23 (Family)"]
        profile = edgeport_cli("hub", "profile", str(tmp_path / "m.edgeport"), "--device",
                               "Samsung Galaxy S24 (Family)", ini=ini)
        assert profile.returncode == 0, profile.stderr
        assert "forward/partition 0" in profile.stdout and "2.500" in profile.stdout


def test_without_a_token_one_clear_error(tmp_path):
    result = edgeport_cli("hub", "devices", ini=tmp_path / "missing.ini")
    assert result.returncode == 1
    assert "no Qualcomm AI Hub API token configured" in result.stderr
    assert "qai-hub configure --api_token" in result.stderr
    assert "Traceback" not in result.stderr
