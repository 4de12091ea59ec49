import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests import torch_backend, the test-only plugin

from onnx_registry import share_torchlib_registry  # noqa: E402
from torch_backend import TorchOpsBackend, registry_with  # noqa: E402


@pytest.fixture
def torchops():
    """A fresh test backend claiming relu/add/mul, in a registry of its own."""
    backend = TorchOpsBackend()
    return backend, registry_with(backend)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """torch's eager ops here are small (references, calibration, training the digits
    CNN), and OpenMP's spinning barriers make them slow whenever the cores are busy with
    anything else: on 2 cores with one busy neighbour, training the digits CNN takes 33 s
    with torch's default 2 threads and 3 s with one. Programs' own runtimes (XNNPACK,
    ONNX Runtime, LiteRT) keep their threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _one_onnx_registry():
    """torch.onnx's function registry built once per opset, not on every export
    (onnx_registry.py): the qualcomm compiles' largest fixed cost."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        share_torchlib_registry(monkeypatch)
        yield


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Files edgeport caches (XNNPACK's packed weights) go to the test run's own
    directory, never the user's cache (subprocesses inherit it)."""
    os.environ["EDGEPORT_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgeport-cache"))
