"""The template plugin's own tests: it registers, and is found through its entry point.

Whether it computes right is the conformance kit's job, run with the same command:

    pytest --edgeport-backend numpy-npu examples/plugin_template/tests

which adds every edgeport conformance case, judged on the installed numpy_npu.
"""

import json
import subprocess
import sys

import edgeport_numpy_npu
from edgeport.testing import installed_backends, registered_by


def test_plugin_registers_numpy_npu():
    assert isinstance(registered_by(edgeport_numpy_npu)["numpy_npu"], edgeport_numpy_npu.NumpyNpuBackend)


def test_edgeport_backends_lists_it():
    assert installed_backends()["numpy_npu"]["distribution"] == "edgeport-numpy-npu"


def test_the_cli_finds_it_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "edgeport.cli", "backends", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert "numpy_npu" in {b["name"] for b in json.loads(out)["backends"]}
